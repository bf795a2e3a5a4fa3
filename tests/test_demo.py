"""`golfpack demo`: built-in data -> train -> pack -> fresh-process verify, on nothing but the package."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from golfpack.cli import main
from golfpack.demo_data import demo_documents, make_demo_data
from golfpack.formats.shards import read_shard


def test_demo_data_is_deterministic_and_split_by_document(tmp_path) -> None:
    a = make_demo_data(tmp_path / "a")
    b = make_demo_data(tmp_path / "b")
    assert a.tokenizer.read_bytes() == b.tokenizer.read_bytes()
    tr = read_shard(tmp_path / "a" / "demo_train_000000.bin")
    va = read_shard(tmp_path / "a" / "demo_val_000000.bin")
    assert np.array_equal(tr, read_shard(tmp_path / "b" / "demo_train_000000.bin"))
    # every 10th page is held out; each document starts with BOS
    docs = demo_documents()
    assert int((va == 1).sum()) == len(docs[::10]) and int((tr == 1).sum()) == len(docs) - len(docs[::10])
    assert tr.size == a.train_tokens > 100_000 and va.size == a.val_tokens > 10_000
    assert int(tr.max()) < 1024 and int(va.max()) < 1024


def test_demo_data_from_given_documents_splits_them_and_fits_its_own_tokenizer(tmp_path) -> None:
    docs = demo_documents()[1::2]  # another corpus: every other page
    d = make_demo_data(tmp_path / "c", val_every=4, documents=[*docs, "  "])  # the blank one is dropped
    tr = read_shard(tmp_path / "c" / "demo_train_000000.bin")
    va = read_shard(tmp_path / "c" / "demo_val_000000.bin")
    assert int((va == 1).sum()) == len(docs[::4]) and int((tr == 1).sum()) == len(docs) - len(docs[::4])
    assert tr.size == d.train_tokens and va.size == d.val_tokens
    assert d.tokenizer.read_bytes() != make_demo_data(tmp_path / "a").tokenizer.read_bytes()
    with pytest.raises(ValueError, match="val_every must be >= 2"):
        make_demo_data(tmp_path / "e", val_every=1, documents=docs)
    with pytest.raises(ValueError, match="need at least val_every=4"):
        make_demo_data(tmp_path / "f", val_every=4, documents=docs[:3])
    assert not (tmp_path / "f").exists()


@pytest.mark.slow  # ~20 s: the whole demo (data, train, pack, verify)
def test_demo_end_to_end_json(tmp_path) -> None:
    res = CliRunner().invoke(main, ["demo", "-o", str(tmp_path / "d"), "--steps", "4", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)  # stdout holds exactly one JSON object
    assert rep["train"]["steps"] == 4 and rep["train"]["tokens"] == 4 * 4096
    art = tmp_path / "d" / "model.qg3"
    assert rep["pack"]["model_bytes"] == art.stat().st_size < rep["pack"]["checkpoint_bytes"] / 4
    v = rep["verify"]
    assert v["ok"] and v["digests_checked"] == 22 and v["digest_mismatches"] == []
    assert v["pre"]["tokens"] == v["post"]["tokens"] == (rep["data"]["val_tokens"] - 1) // 128 * 128
    assert math.isclose(v["val_bpb_gap"], v["post"]["val_bpb"] - v["pre"]["val_bpb"], abs_tol=1e-12)
    assert 0 < v["pre"]["val_bpb"] < 10 and abs(v["val_bpb_gap"]) < 0.1
    assert any(line.startswith("golfpack pack ") for line in rep["replay"])


def test_demo_bad_policy_fails_before_work(tmp_path) -> None:
    res = CliRunner().invoke(main, ["demo", "-o", str(tmp_path / "d"), "--policy", "int7"])
    assert res.exit_code != 0 and res.output.strip().startswith("Error: unknown policy")
    assert not (tmp_path / "d").exists()
