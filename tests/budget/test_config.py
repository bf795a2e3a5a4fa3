"""SearchConfig refuses a bad value when it is built, naming the parameter (not minutes into a search)."""

from __future__ import annotations

import pytest

from golfpack.budget import SearchConfig
from golfpack.errors import UsageError


def _refused(param: str, **kw) -> str:
    with pytest.raises(UsageError) as e:
        SearchConfig(**{"budget": 1000, **kw})
    assert e.value.param == param, (kw, e.value.param)
    assert "--" not in str(e.value)  # library messages name parameters; the CLI adds flags
    return str(e.value)


def test_defaults_are_valid_and_normalised():
    cfg = SearchConfig(budget=16_000_000, code=("a.py",), bits=[8, 6], codecs=["lzma", "lzma"])
    assert cfg.code == ["a.py"] and cfg.bits == (8, 6) and cfg.codecs == ("lzma", "lzma")
    assert cfg.codec_list() == ["lzma"]  # repeats dropped
    assert "lzma" in SearchConfig(budget=1, codecs=("all",)).codec_list() == SearchConfig(budget=1, codecs=()).codec_list()
    # replace() validates too
    assert cfg.replace(solver="greedy").solver == "greedy"
    with pytest.raises(UsageError):
        cfg.replace(solver="annealing")


@pytest.mark.parametrize("field,allowed", [
    ("sensitivity", "direct, proxy, both"), ("objective", "kl, nll, auto"), ("solver", "dp, greedy, best"),
    ("activation", "relu2, relu3, leaky_relu2"),
])
def test_enum_fields_list_what_they_accept(field, allowed):
    msg = _refused(field, **{field: "bogus"})
    assert f"{field} must be one of {allowed}, got 'bogus'" == msg


@pytest.mark.parametrize("field", ["budget", "self_sequences", "gptq_batch", "calib_batch", "calib_seq", "proxy_batch",
                                   "select_batch", "max_fit_packs", "num_heads"])
def test_positive_ints(field):
    assert _refused(field, **{field: 0}) == f"{field} must be positive, got 0"
    assert "must be an integer" in _refused(field, **{field: 2.5})
    assert "must be an integer" in _refused(field, **{field: True})  # a bool is not a count
    SearchConfig(**{"budget": 1000, field: 3})


@pytest.mark.parametrize("field", ["self_seed", "target_headroom", "max_repair_packs"])
def test_non_negative_ints(field):
    SearchConfig(budget=1000, **{field: 0})  # zero is meaningful (e.g. no repair packs)
    assert _refused(field, **{field: -1}) == f"{field} must be at least 0, got -1"


def test_lists_of_choices():
    assert "unknown or unavailable codecs 'gzip'" in _refused("codecs", codecs=("lzma", "gzip"))
    _refused("codecs", codecs="lzma")  # a bare string is not a list of codecs
    assert SearchConfig(budget=1).codecs == ("lzma+rans",) and SearchConfig(budget=1, codecs=("rans+lzma",)).codec_list() == ["rans+lzma"]
    for bad in ("lzma+lzma", "lzma+gzip", "best+lzma"):  # a set: distinct available codecs, no 'best' inside
        assert f"unknown or unavailable codecs '{bad}'" in _refused("codecs", codecs=(bad,))
    SearchConfig(budget=1, codecs=("best",))
    assert _refused("bits", bits=(8, 9)) == "unknown or unavailable bits 9: use 2, 3, 4, 5, 6, 7, 8"
    _refused("bits", bits=())
    _refused("bits", bits=(4.0,))  # widths are integers
    assert "median" in _refused("clips", clips=("quantile", "median"))
    _refused("clips", clips=())
    _refused("passthrough", passthrough=("fp8",))
    SearchConfig(budget=1, passthrough=())  # no extra passthroughs is fine
    _refused("code", code="train_gpt.py")


def test_strings_bools_and_optionals():
    _refused("calib", calib="")
    _refused("device", device=None)
    _refused("tokenizer", tokenizer=3)
    _refused("cache_dir", cache_dir=b"x")
    _refused("gptq", gptq="yes")
    _refused("select", select=1)
    _refused("progress", progress="auto")
    SearchConfig(budget=1, progress=None, tokenizer=None, num_heads=None, activation=None)


def test_gptq_calib_names_real_tokens_or_nothing():
    assert SearchConfig(budget=1).gptq_calib is None  # the calib tokens
    assert SearchConfig(budget=1, gptq_calib="pydoc", tokenizer="sp.model").gptq_calib == "pydoc"
    SearchConfig(budget=1, gptq_calib="data/*_train_*.bin")
    assert "gptq_calib must be 'pydoc', a train-shard glob or None" in _refused("gptq_calib", gptq_calib="self")
    _refused("gptq_calib", gptq_calib="")
    _refused("gptq_calib", gptq_calib=3)
    assert "needs a tokenizer" in _refused("tokenizer", gptq_calib="pydoc")
