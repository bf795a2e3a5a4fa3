"""`export-decoder --minify`: the decoder made smaller at export time (DECODER_SOURCE stays readable) must be the
same program: same tensors for every layout, same verdict on hostile files."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from golfpack.errors import UsageError
from golfpack.formats.codecs import available_codecs
from golfpack.formats.qgv3 import encode_qgv3, tensor_digest
from golfpack.packer.decoder import DECODER_SOURCE, decoder_source, export_decoder
from tests.packer.test_decoder import _records, _run


def _module(src: str) -> dict:
    ns: dict = {"__name__": "qg3_decode"}
    exec(compile(src, "qg3_decode.py", "exec"), ns)  # noqa: S102 - our own decoder
    return ns


def _want_and_paths(tmp_path):
    records = _records()
    want = {r.name: [str(r.dequantize().dtype), list(r.shape), tensor_digest(r.dequantize())] for r in records}
    paths = []
    for codec in available_codecs():
        p = tmp_path / f"m_{codec}.qg3"
        p.write_bytes(encode_qgv3(records, config={"x": 1}, policy=None, codec=codec, blocks="solid" if codec == "zlib" else "separate"))
        paths.append(p)
    return want, paths


def test_minified_decoder_loads_every_layout_exactly(tmp_path) -> None:
    pytest.importorskip("python_minifier")
    ns = _module(decoder_source(minify=True))
    want, paths = _want_and_paths(tmp_path)
    for p in paths:
        sd = ns["load"](str(p))
        assert {n: [str(t.dtype), list(t.shape), tensor_digest(t)] for n, t in sd.items()} == want, p.name
    assert len(decoder_source(minify=True).encode()) < 0.7 * len(DECODER_SOURCE.encode())  # measured: 12,511 -> 7,508 B


@pytest.mark.slow
def test_minified_decoder_loads_every_layout_exactly_in_a_bare_interpreter(tmp_path) -> None:
    pytest.importorskip("python_minifier")
    dec = tmp_path / "qg3_decode.py"
    n = export_decoder(dec, minify=True)
    assert n == dec.stat().st_size == len(decoder_source(minify=True).encode())
    assert decoder_source(minify=True) == decoder_source(minify=True)  # deterministic
    want, paths = _want_and_paths(tmp_path)
    got = _run(dec, paths, tmp_path)  # isolated child: no golfpack, no python-minifier
    for p in paths:
        assert got[str(p)] == want, p.name


def test_minified_decoder_gives_the_readable_decoders_verdict_on_hostile_files(tmp_path) -> None:
    """120 fuzz cases (checksums recomputed) through both: same refusals, same digests verdict, same tensors."""
    pytest.importorskip("python_minifier")
    import random

    import torch

    from tests.fuzz.qgv3_fuzz import base_artifacts, mutate

    small, big = _module(DECODER_SOURCE), _module(decoder_source(minify=True))

    def verdict(ns, path):
        try:
            sd = ns["load"](str(path), check=False)
        except ValueError:
            return "refused"
        try:
            ns["load"](str(path), check=True)
        except ValueError:
            return ("digest", sd)
        return ("ok", sd)

    rng = random.Random(7)
    bases = base_artifacts()
    seen = set()
    for i in range(120):
        p = tmp_path / "case.qg3"
        p.write_bytes(mutate(rng, rng.choice(bases)) if i >= len(bases) else bases[i])
        a, b = verdict(small, p), verdict(big, p)
        if a == "refused" or b == "refused":
            assert a == b, i
            seen.add("refused")
            continue
        assert a[0] == b[0] and list(a[1]) == list(b[1]), i
        assert all(torch.equal(a[1][k], b[1][k]) or (a[1][k].isnan() == b[1][k].isnan()).all() for k in a[1]), i
        seen.add(a[0])
    assert seen == {"ok", "digest", "refused"}


def test_cli_minify_flag(tmp_path) -> None:
    from golfpack.cli import main

    pytest.importorskip("python_minifier")
    res = CliRunner().invoke(main, ["export-decoder", "-o", str(tmp_path / "d.py"), "--minify", "--json"])
    assert res.exit_code == 0, res.output
    assert '"bytes": ' + str(len(decoder_source(minify=True).encode())) in res.output


def test_missing_python_minifier_is_a_usage_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "python_minifier", None)  # as if not installed
    with pytest.raises(UsageError, match="pip install python-minifier"):
        decoder_source(minify=True)
    assert decoder_source() == DECODER_SOURCE  # the readable one needs nothing
