"""The foreign LM through every command with `--model tests/adapters/foreign_lm.py`: pack (every preset and
+gptq), search at a binding budget, verify --eval in a fresh process, eval with stride 64."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from golfpack.cli import main
from golfpack.formats.qgv3 import decode_qgv3
from golfpack.packer.policy import PRESETS
from tests.adapters.conftest import FOREIGN

M = ["--model", str(FOREIGN)]


def run(*args: str):
    r = CliRunner().invoke(main, list(args))
    assert r.exit_code == 0, r.output
    return r


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_pack_every_preset_names_the_model_code(foreign_ckpt, tmp_path, preset) -> None:
    from golfpack.adapters import load_adapter

    out = tmp_path / "a.qg3"
    rep = json.loads(run("pack", str(foreign_ckpt), *M, "--policy", preset, "-o", str(out), "--json").output)
    art = decode_qgv3(out.read_bytes())
    assert rep["model_bytes"] == out.stat().st_size and art.config is None
    assert art.meta["model_adapter"] == "foreign_lm.py:build_model"
    assert art.meta["model_sha256"] == load_adapter(str(FOREIGN)).sha256
    assert art.check_digests() == []  # each tensor rebuilds to the packer's bits
    sd = torch.load(foreign_ckpt)
    assert set(art.state_dict()) == set(sd)


def test_pack_gptq_through_the_adapter(foreign_ckpt, calib_shard, tmp_path) -> None:
    out, base = tmp_path / "g.qg3", tmp_path / "r.qg3"
    common = [str(foreign_ckpt), *M, "--policy", "int6", "--calib", calib_shard, "--json"]
    run("pack", *common, "--set", "blocks.*=int5+gptq", "--set", "*_emb.weight=int5+gptq", "-o", str(out))
    run("pack", *common, "--set", "blocks.*=int5", "--set", "*_emb.weight=int5", "-o", str(base))
    art = decode_qgv3(out.read_bytes())
    specs = {e["name"]: e["spec"] for e in art.header["tensors"]}
    assert specs["blocks.1.gate_up.weight"] == "int5+gptq" and specs["blocks.0.qkv.weight"] == "int5+gptq"
    # no linear input: round-to-nearest on the int5 grid, the same bits as a plain int5 pack
    assert specs["tok_emb.weight"] == "int5" and specs["blocks.0.scale"] == "int5"
    plain = decode_qgv3(base.read_bytes()).state_dict()
    got = art.state_dict()
    assert torch.equal(got["tok_emb.weight"], plain["tok_emb.weight"])
    assert not torch.equal(got["blocks.0.qkv.weight"], plain["blocks.0.qkv.weight"])
    assert art.policy["calibration"]["digest"] and art.check_digests() == []


def test_search_binding_budget_verify_eval_and_sliding_eval(foreign_ckpt, calib_shard, sp1024_model, val_shard, tmp_path) -> None:
    out = tmp_path / "s.qg3"
    common = [str(foreign_ckpt), *M, "--tokenizer", str(sp1024_model), "--calib", calib_shard, "--bits", "8,6,4",
              "--clips", "quantile", "--calib-batch", "2", "--calib-seq", "64", "--gptq-batch", "4", "--frontier", "0",
              "--threads", "1", "--no-verify", "--no-select", "--json"]
    rep = json.loads(run("search", *common, "--budget", "160000", "-o", str(out)).output)
    assert rep["total_bytes"] == out.stat().st_size <= 160_000 and rep["floor"] < 160_000
    assert rep["headroom"] < 4096  # the budget binds: int8 everywhere would not fit
    assert any(lbl.endswith("+gptq") for lbl in rep["layout"].values())
    assert "--model" in rep["replay"]
    # the policy replays through `golfpack pack --model` to the very bytes
    replay = tmp_path / "replay.qg3"
    run("pack", str(foreign_ckpt), *M, "--policy", rep["policy_file"], "--codec", rep["codec"], "-o", str(replay))
    assert replay.read_bytes() == out.read_bytes()
    # fresh-process verify: digests, then the score through the model file imported there
    ev = ["--eval", "--val", str(val_shard), "--tokenizer", str(sp1024_model), "--seq-len", "128", "--max-tokens", "2049"]
    v = json.loads(run("verify", str(out), *M, "--against", str(foreign_ckpt), *ev, "--json").output)
    assert v["ok"] and v["digests_checked"] == 14 and v["model_adapter"] == "foreign_lm.py:build_model"
    assert v["post"]["tokens"] == 2048 and v["pre"]["tokens"] == 2048 and abs(v["val_bpb_gap"]) < 0.05
    # sliding eval, stride 64: every target once, the same bytes as the reference eval
    e = json.loads(run("eval", str(out), *M, "--val", str(val_shard), "--tokenizer", str(sp1024_model), "--seq-len", "128",
                       "--stride", "64", "--max-tokens", "2049", "--threads", "1", "--json").output)
    assert e["tokens"] == 2048 and e["bytes"] == v["post"]["bytes"] and e["stride"] == 64 and e["windows"] == 31
    assert e["model"]["adapter"] == "foreign_lm.py:build_model"
    assert e["val_bpb"] < v["post"]["val_bpb"] + 0.02  # more context never costs much; same targets


def test_verify_says_when_the_model_code_changed(foreign_ckpt, tmp_path) -> None:
    out = tmp_path / "a.qg3"
    run("pack", str(foreign_ckpt), *M, "-o", str(out))
    edited = tmp_path / "foreign_lm.py"
    edited.write_text(FOREIGN.read_text() + "\n# edited after packing\n")
    r = CliRunner().invoke(main, ["verify", str(out), "--model", str(edited), "--json"])
    assert r.exit_code == 1
    rep = json.loads(r.output)
    assert any("model code changed since packing" in p for p in rep["problems"])
    assert json.loads(run("verify", str(out), *M, "--json").output)["ok"]


def test_eval_takes_the_model_config_through_the_cli(foreign_ckpt, sp1024_model, val_shard, tmp_path) -> None:
    (tmp_path / "loops3.json").write_text('{"loops": 3}')  # the file's default
    (tmp_path / "loops2.json").write_text('{"loops": 2}')
    common = ["eval", str(foreign_ckpt), "--val", str(val_shard), "--tokenizer", str(sp1024_model), "--seq-len", "128",
              "--max-tokens", "1025", "--json"]
    default = json.loads(run(*common, *M).output)["val_bpb"]
    loops3 = json.loads(run(*common, "--model", f"{FOREIGN}@{tmp_path / 'loops3.json'}").output)["val_bpb"]
    loops2 = json.loads(run(*common, "--model", f"{FOREIGN}@{tmp_path / 'loops2.json'}").output)["val_bpb"]
    assert loops3 == default and loops2 != default
