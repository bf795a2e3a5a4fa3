"""`golfpack eval` end to end: JSON output, and one clear error line (no traceback) for every bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from golfpack.cli import main
from golfpack.formats.shards import write_shard
from tests.conftest import shared_file


def run_cli(*args: str):
    return CliRunner().invoke(main, ["eval", *map(str, args)])


def assert_user_error(res, pattern: str) -> None:
    assert res.exit_code != 0, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), res.output
    assert pattern in lines[0], lines[0]


@pytest.fixture()
def base(taleef_pt, val_shard, sp1024_model):
    """Common arguments: Taleef7 (tiny, fast) on the official val prefix."""
    return [taleef_pt, "--val", val_shard, "--tokenizer", sp1024_model, "--seq-len", "128"]


def test_json_report(base):
    res = run_cli(*base, "--max-tokens", "4097", "--json")
    assert res.exit_code == 0, res.output
    d = json.loads(res.output)
    assert d["tokens"] == 4096 and d["windows"] == 32 and d["mode"] == "non-overlapping"
    assert 3.5 < d["val_bpb"] < 4.5 and d["bytes"] > 4096
    for k in ("val_loss", "val_bpb", "tokens", "bytes", "seconds", "tokens_per_s"):
        assert k in d
    m = d["model"]  # the config actually used, and where it came from
    c = m["config"]
    assert (c["num_layers"], c["model_dim"], c["num_heads"], c["num_kv_heads"], c["vocab_size"]) == (2, 64, 4, 2, 1024)
    assert c["activation"] == "relu2" and m["source"] == "inferred"
    assert m["overridden"] == {} and m["assumed"] == ["activation"]


def test_text_report_and_sliding(base):
    res = run_cli(*base, "--max-tokens", "4097", "--stride", "32", "--batch-size", "7")
    assert res.exit_code == 0, res.output
    assert "val_bpb:" in res.output and "sliding: seq_len 128, stride 32, 125 windows" in res.output
    assert "tokens: 4,096" in res.output
    assert ("model: 2 layers, dim 64, 4 heads / 2 kv, mlp 64, vocab 1024, activation relu2 (assumed default: "
            "raw weights do not record it; see --activation); config inferred from weight shapes") in res.output


def test_report_shows_overrides(nolanvild_pt, val_shard, sp1024_model):
    """A relu^3 checkpoint: the report says which activation scored it and that it came from the flag."""
    args = [nolanvild_pt, "--val", val_shard, "--tokenizer", sp1024_model, "--seq-len", "128", "--max-tokens", "1025"]
    res = run_cli(*args, "--activation", "relu3", "--num-heads", "4")
    assert res.exit_code == 0, res.output
    assert ("model: 3 layers, dim 128, 4 heads / 2 kv, mlp 256, vocab 1024, activation relu3 (--activation); "
            "config inferred from weight shapes, overridden by --num-heads 4, --activation relu3") in res.output
    d = json.loads(run_cli(*args, "--activation", "relu3", "--json").output)
    assert d["model"]["config"]["activation"] == "relu3" and d["model"]["overridden"] == {"activation": "relu3"}
    assert d["model"]["assumed"] == []


def test_wrong_vocab(taleef_pt, val_shard):
    sp8192 = shared_file("tokenizers/fineweb_8192_bpe.model")
    res = run_cli(taleef_pt, "--val", val_shard, "--tokenizer", sp8192)
    assert_user_error(res, "vocab mismatch: the model has 1024 token embeddings but tokenizer")


def test_token_ids_beyond_vocab(base, tmp_path):
    arr = np.full(300, 7, dtype=np.uint16)
    arr[100] = 5000
    write_shard(tmp_path / "v_000000.bin", arr)
    base[2] = tmp_path / "v_*.bin"
    assert_user_error(run_cli(*base), "val tokens contain id 5000")


def test_missing_shards(base, tmp_path):
    base[2] = tmp_path / "nothing_*.bin"
    assert_user_error(run_cli(*base), "no shard files match")


def test_truncated_shard(base, tmp_path, val_shard):
    bad = tmp_path / "val_000000.bin"
    bad.write_bytes(Path(val_shard).read_bytes()[: 1024 + 2 * 5000 - 3])
    base[2] = bad
    assert_user_error(run_cli(*base), "truncated")


def test_too_few_tokens(base):
    assert_user_error(run_cli(*base, "--max-tokens", "100"), "too few val tokens: 100 given")


@pytest.mark.parametrize("stride,msg", [("0", "must be positive"), ("200", "must not exceed"), ("48", "must divide seq_len 128")])
def test_bad_stride(base, stride, msg):
    res = run_cli(*base, "--stride", stride)
    assert_user_error(res, msg)
    assert "valid strides for seq_len 128: 1, 2, 4, 8, 16, 32, 64, 128 (--stride)" in res.output  # the CLI names the flag


def test_foreign_checkpoint_keys(ginferno_pt, val_shard, sp1024_model):
    res = run_cli(ginferno_pt, "--val", val_shard, "--tokenizer", sp1024_model)
    assert_user_error(res, "key(s) the baseline GPT family does not have")


def test_checkpoint_with_missing_and_misshaped_keys(taleef_pt, base, tmp_path):
    sd = torch.load(taleef_pt, map_location="cpu", weights_only=True)
    del sd["blocks.1.mlp_scale"]
    sd["blocks.0.attn_scale"] = torch.ones(65)
    bad = tmp_path / "bad.pt"
    torch.save(sd, bad)
    base[0] = bad
    res = run_cli(*base)
    assert_user_error(res, "does not match")
    assert "missing blocks.1.mlp_scale" in res.output and "blocks.0.attn_scale has shape [65]" in res.output


def test_not_a_checkpoint(base, tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello, not a model")
    base[0] = junk
    res = run_cli(*base)
    assert res.exit_code != 0 and "Traceback" not in res.output and res.output.startswith("Error: ")


def test_missing_checkpoint(base, tmp_path):
    base[0] = tmp_path / "absent.pt"
    assert_user_error(run_cli(*base), "not found")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda(base):
    assert_user_error(run_cli(*base, "--device", "cuda"), "no CUDA device is available")


def test_module_entry_point_error_line(base):
    """`python -m golfpack.evaluator` (what torchrun runs): one Error line on stderr, exit 1."""
    p = subprocess.run([sys.executable, "-m", "golfpack.evaluator", *map(str, base), "--stride", "0"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 1
    assert "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith("Error: stride 0 must be positive")
    assert p.stderr.strip().endswith("(--stride)")


@pytest.mark.slow  # ~20 s: torchrun start-up of two processes
def test_torchrun_two_ranks_match_one_process(taleef_pt, val_shard, sp1024_model):
    """2 gloo ranks (uneven window split with stride 64) give the 1-process val_loss/val_bpb."""
    from golfpack.evaluator.api import evaluate_path

    args = ["--val", str(val_shard), "--tokenizer", str(sp1024_model), "--seq-len", "256", "--stride", "64",
            "--max-tokens", "16385", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun sets it too; explicit for clarity
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "golfpack.evaluator", str(taleef_pt), *args],
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-2000:]
    two = json.loads(p.stdout)  # only rank 0 prints
    one = evaluate_path(taleef_pt, val=str(val_shard), tokenizer=sp1024_model, seq_len=256, stride=64, max_tokens=16385)
    assert two["world_size"] == 2 and two["windows"] == one.windows == 253
    assert two["tokens"] == one.tokens == 16384 and two["bytes"] == one.bytes
    assert two["val_loss"] == pytest.approx(one.val_loss, rel=1e-9)
    assert two["val_bpb"] == pytest.approx(one.val_bpb, rel=1e-9)


def test_artifacts_fresh_load_and_score(taleef_pt, taleef_ptz, base, tmp_path):
    """The raw .pt, its legacy int8 .ptz and a QGv3 pack of it all load through one path and score alike."""
    scores = {}
    paths = {"raw": taleef_pt, "ptz": taleef_ptz}
    try:
        from golfpack.formats.checkpoint import load_state_dict
        from golfpack.loading import infer_config
        from golfpack.packer.pack import pack_state_dict
        from golfpack.packer.policy import Policy

        sd = load_state_dict(taleef_pt)
        res = pack_state_dict(sd, Policy.preset("int8"), codec="lzma", config=infer_config(sd))
        (tmp_path / "m.qg3").write_bytes(res.data)
        paths["qgv3"] = tmp_path / "m.qg3"
    except ImportError:  # packer/format not in this build: raw and legacy still checked
        pass
    for kind, path in paths.items():
        args = list(base)
        args[0] = path
        r = run_cli(*args, "--max-tokens", "8193", "--json")
        assert r.exit_code == 0, r.output
        scores[kind] = json.loads(r.output)
    for kind, d in scores.items():
        assert d["tokens"] == 8192 and d["bytes"] == scores["raw"]["bytes"]
        assert d["model"]["source"] == ("artifact" if kind == "qgv3" else "inferred"), kind
        assert d["model"]["config"]["num_layers"] == 2 and d["model"]["config"]["activation"] == "relu2"
        assert d["val_bpb"] == pytest.approx(scores["raw"]["val_bpb"], abs=2e-3), kind


@pytest.mark.parametrize("heads,msg", [("0", "num_heads must be positive, got 0 (--num-heads)"),
                                       ("3", "model_dim 64 is not divisible by num_heads 3: pass a num_heads that divides 64 (--num-heads)")])
def test_bad_num_heads(base, heads, msg):
    assert_user_error(run_cli(*base, "--num-heads", heads), msg)


def test_empty_q_gain(taleef_pt, base, tmp_path):
    sd = torch.load(taleef_pt, map_location="cpu", weights_only=True)
    sd["blocks.0.attn.q_gain"] = torch.zeros(0)
    base[0] = tmp_path / "no_heads.pt"
    torch.save(sd, base[0])
    assert_user_error(run_cli(*base), "q_gain is empty")


def test_val_is_a_folder(base, tmp_path):
    base[2] = tmp_path
    assert_user_error(run_cli(*base), f"shard {tmp_path}: is a folder, not a shard file")


def test_unreadable_shard_is_one_error_line(base, tmp_path, val_shard, monkeypatch):
    """An OSError while reading (here EACCES) prints `Error: <path>: <reason>`, via the group and via eval_cmd
    alone (what `python -m golfpack.evaluator` runs)."""
    import errno

    from golfpack.cli.eval import eval_cmd

    shard = tmp_path / "val_000000.bin"
    shard.write_bytes(Path(val_shard).read_bytes()[: 1024 + 2 * 4097])
    shard.chmod(0)
    base[2] = shard
    if os.geteuid() == 0:  # root reads mode-000 files anyway: make the read fail the way it would for a user
        import golfpack.formats.shards as shards

        def refuse(path, *a, **k):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

        monkeypatch.setattr(shards.np, "fromfile", refuse)
    try:
        for res in (run_cli(*base), CliRunner().invoke(eval_cmd, list(map(str, base)))):
            assert_user_error(res, f"Error: {shard}: Permission denied")
    finally:
        shard.chmod(0o644)
