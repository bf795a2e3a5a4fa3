"""End-to-end training on real text (Python's docs, sp1024), on CPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from golfpack.errors import GolfpackError
from golfpack.formats.checkpoint import load_state_dict
from golfpack.loading import infer_config
from golfpack.model import GPT, ModelConfig, build_model
from golfpack.trainer.config import load_config
from golfpack.trainer.loop import train
from tests.trainer.conftest import tiny_overrides

TRAIN_RE = re.compile(r"^step:(\d+)/(\d+) train_loss:(\d+\.\d{4}) train_time:(\d+)ms step_avg:(\d+\.\d{2})ms$")
VAL_RE = re.compile(r"^step:(\d+)/(\d+) val_loss:(\d+\.\d{4}) val_bpb:(\d+\.\d{4}) train_time:(\d+)ms step_avg:(\d+\.\d{2})ms$")


def test_tiny_loss_falls(tiny_run):
    cfg, r = tiny_run
    losses = [l for _, l in r.train_losses]
    assert len(losses) == r.steps == 20 and r.tokens == 20 * 2048
    assert 6.7 < losses[0] < 7.1  # ~ln(1024) = 6.93 at init
    assert sum(losses[-5:]) / 5 < losses[0] - 1.0  # clearly learning
    vals = [v["val_loss"] for v in r.val_history]
    assert [v["step"] for v in r.val_history] == [0, 10, 20]
    assert vals[-1] < vals[0] - 0.5  # held-out text of the same kind: the val loss falls too
    assert r.val_history[-1]["val_bpb"] < r.val_history[0]["val_bpb"] - 0.2


def test_outputs_checkpoint_metadata_and_log(tiny_run):
    cfg, r = tiny_run
    sd = load_state_dict(r.checkpoint)
    assert all(v.dtype == torch.float32 for v in sd.values())  # plain fp32 on CPU
    assert not any(k.startswith(("_orig_mod.", "module.", "base.")) for k in sd)
    mcfg = infer_config(sd)
    assert mcfg == cfg.model_config().replace(qk_gain_init=mcfg.qk_gain_init, tied_embed_init_std=mcfg.tied_embed_init_std)
    meta = json.loads(r.metadata.read_text())
    assert ModelConfig.from_dict(meta["model_config"]) == cfg.model_config()
    t = meta["training"]
    assert (t["steps"], t["tokens"], t["seed"], t["world_size"], t["grad_accum_steps"]) == (20, 40960, 1337, 1, 8)
    assert t["final_val_bpb"] == pytest.approx(r.val_history[-1]["val_bpb"])
    assert t["git_revision"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", t["git_revision"])
    assert meta["train_config"]["train_seq_len"] == 64
    # The reloaded checkpoint reproduces the final validation loss.
    model = build_model(mcfg, sd)
    lines = r.log_path.read_text().splitlines()
    train_lines = [m for m in map(TRAIN_RE.match, lines) if m]
    val_lines = [m for m in map(VAL_RE.match, lines) if m]
    assert [int(m.group(1)) for m in train_lines] == list(range(1, 21))
    assert [float(m.group(3)) for m in train_lines] == [round(l, 4) for _, l in r.train_losses]
    assert [int(m.group(1)) for m in val_lines] == [0, 10, 20]
    assert any(SERIALIZED_RE.match(l) for l in lines)
    assert isinstance(model, GPT)


# The baseline train_gpt.py's own line formats (its log parsers rely on them), in the order it prints the header.
BASELINE_HEADER = [
    ("val_bpb", r"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path=(\S+)"),
    ("train_loader", r"train_loader:dataset:(\S+) train_shards:(\d+)"),
    ("val_loader", r"val_loader:shards pattern=(\S+) tokens:(\d+)"),
    ("model_params", r"model_params:(\d+)"),
    ("world_size", r"world_size:(\d+) grad_accum_steps:(\d+)"),
    ("sdp_backends", r"sdp_backends:cudnn=(True|False) flash=(True|False) mem_efficient=(True|False) math=(True|False)"),
    ("attention_mode", r"attention_mode:(gqa|mha) num_heads:(\d+) num_kv_heads:(\d+)"),
    ("lrs", r"tie_embeddings:(True|False) embed_lr:(\S+) head_lr:(\S+) matrix_lr:(\S+) scalar_lr:(\S+)"),
    ("batch", r"train_batch_tokens:(\d+) train_seq_len:(\d+) iterations:(\d+) warmup_steps:(\d+) max_wallclock_seconds:(\d+\.\d{3})"),
    ("seed", r"seed:(\d+)"),
]
WARMUP_RE = re.compile(r"^warmup_step:(\d+)/(\d+)$")
SERIALIZED_RE = re.compile(r"^Serialized model: (\d+) bytes$")


def test_log_lines_use_the_baseline_formats(tmp_path, train_shards, heldout_path, sp1024_path):
    cfg = load_config("tiny", overrides=tiny_overrides(train_shards, tmp_path, heldout_path, str(sp1024_path), iterations=3,
                                                        warmup_steps=2, val_loss_every=2, train_log_every=1))
    r = train(cfg, echo=None)
    lines = (tmp_path / "train.log").read_text().splitlines()
    found = {}
    for name, pat in BASELINE_HEADER:
        hits = [(i, m) for i, m in enumerate(re.fullmatch(pat, l) for l in lines) if m]
        assert len(hits) == 1, (name, lines)
        found[name] = hits[0]
    assert [found[n][0] for n, _ in BASELINE_HEADER] == sorted(found[n][0] for n, _ in BASELINE_HEADER)  # baseline order
    g = {n: m.groups() for n, (_, m) in found.items()}
    assert g["val_bpb"] == (str(sp1024_path),)
    assert g["train_loader"] == (Path(train_shards).parent.name, "2")
    assert g["val_loader"] == (heldout_path, "4096")  # val_max_tokens 4097 -> 64 sequences of 64
    assert int(g["model_params"][0]) == sum(p.numel() for p in GPT(cfg.model_config()).parameters())
    assert g["world_size"] == ("1", "8")
    assert g["attention_mode"] == ("gqa", "4", "2")
    assert g["lrs"] == ("True", str(cfg.tied_embed_lr), "0.0", str(cfg.matrix_lr), str(cfg.scalar_lr))
    assert g["batch"] == ("2048", "64", "3", "2", "0.000")
    assert g["seed"] == ("1337",)
    assert [m.groups() for m in map(WARMUP_RE.match, lines) if m] == [("1", "2"), ("2", "2")]
    assert [m.group(1) for m in map(TRAIN_RE.match, lines) if m] == ["1", "2", "3"]
    assert [(m.group(1), m.group(2)) for m in map(VAL_RE.match, lines) if m] == [("0", "3"), ("2", "3"), ("3", "3")]
    ser = [m for m in map(SERIALIZED_RE.match, lines) if m]
    assert len(ser) == 1 and int(ser[0].group(1)) == r.checkpoint.stat().st_size
    # Every other line is golfpack's own, on a line of its own.
    baseline_res = [re.compile(p) for _, p in BASELINE_HEADER] + [WARMUP_RE, TRAIN_RE, VAL_RE, SERIALIZED_RE]
    rest = [l for l in lines if not any(p.fullmatch(l) for p in baseline_res)]
    assert rest and all(l.startswith("golfpack_") for l in rest), rest


def test_checkpoint_scores_the_same_after_reload(tiny_run, heldout_path):
    from golfpack.evaluator.dist import DistContext
    from golfpack.formats.shards import load_tokens
    from golfpack.trainer.loop import _Validator

    cfg, r = tiny_run
    model = build_model(infer_config(load_state_dict(r.checkpoint)), load_state_dict(r.checkpoint))
    toks = load_tokens(heldout_path, cfg.val_max_tokens)
    vl, vb = _Validator(cfg, toks, DistContext())(model)
    assert vl == pytest.approx(r.val_history[-1]["val_loss"], abs=1e-5)
    assert vb == pytest.approx(r.val_history[-1]["val_bpb"], abs=1e-5)


@pytest.mark.parametrize("world", [1, 2, 4, 8])
def test_val_batch_per_rank_is_the_baselines(world):
    from golfpack.trainer.loop import val_batch_seqs

    # Baseline: VAL_BATCH_SIZE // (world_size * grad_accum_steps) tokens per rank-forward = 524288 // 8 = 64 x 1024.
    assert val_batch_seqs(load_config("baseline"), world) == 64
    assert val_batch_seqs(load_config("tiny"), world) == 16_384 // 8 // 128


def test_validator_forwards_one_eighth_of_the_val_batch(tiny_run, heldout_path, monkeypatch):
    import golfpack.trainer.loop as loop
    from golfpack.formats.shards import load_tokens

    cfg, _ = tiny_run  # val_batch_tokens 4096, seq 64: 4096 // 8 = 512 tokens = 8 sequences per forward
    model = GPT(cfg.model_config())
    toks = load_tokens(heldout_path, cfg.val_max_tokens)  # 4097 tokens = 64 sequences
    sizes = []
    real_hidden = model.hidden
    monkeypatch.setattr(model, "hidden", lambda x: sizes.append(tuple(x.shape)) or real_hidden(x))
    loop._Validator(cfg, toks, loop.DistContext())(model)
    assert sizes == [(8, 64)] * 8


def test_warmup_steps_are_undone_and_ema_is_saved(tmp_path, train_shards):
    runs = {}
    # warmdown_iters=0: constant lr, so the 1-step run's weights are exactly step 1 of the 2-step runs.
    for name, extra in {"plain": {}, "one": {"iterations": 1}, "warm": {"warmup_steps": 2}, "ema": {"ema_decay": 0.9}}.items():
        sets = {"iterations": 2, "warmdown_iters": 0, **extra}
        cfg = load_config("tiny", overrides=tiny_overrides(train_shards, tmp_path / name, **sets))
        runs[name] = (train(cfg, echo=None), load_state_dict(tmp_path / name / "final_model.pt"))
    # Warmup primes, then restores model, optimizer and data position: identical run afterwards.
    assert runs["warm"][0].train_losses == runs["plain"][0].train_losses
    assert runs["plain"][0].train_time_ms > 0 and runs["warm"][0].train_time_ms > 0
    for k, v in runs["plain"][1].items():
        assert torch.equal(v, runs["warm"][1][k]), k
    assert "warmup_step:2/2" in (tmp_path / "warm" / "train.log").read_text()
    # EMA after 2 steps, computed independently from init, w1 (1-step run) and w2 (2-step run):
    # e1 = d*init + (1-d)*w1, e2 = d*e1 + (1-d)*w2.
    assert runs["ema"][0].train_losses == runs["plain"][0].train_losses  # EMA does not touch training
    assert runs["one"][0].train_losses == runs["plain"][0].train_losses[:1]
    torch.manual_seed(1337)
    init = GPT(load_config("tiny").model_config()).state_dict()
    w1, w2, ema_sd = runs["one"][1], runs["plain"][1], runs["ema"][1]
    d = 0.9
    assert set(ema_sd) == set(init)
    for k in init:
        e1 = d * init[k].float() + (1 - d) * w1[k]
        e2 = d * e1 + (1 - d) * w2[k]
        torch.testing.assert_close(ema_sd[k], e2, rtol=0, atol=1e-6, msg=k)
    k = "blocks.0.attn.c_q.weight"
    assert not torch.equal(w1[k], w2[k]) and (ema_sd[k] - w2[k]).abs().max() > 1e-4  # the EMA is not the live weights


def test_qat_switches_on_by_step_fraction_and_by_time(tmp_path, train_shards):
    cfg = load_config("tiny", overrides=tiny_overrides(train_shards, tmp_path / "s", iterations=4, qat_policy="int6+tok8",
                                                        qat_start_frac=0.5, qat_start_time_frac=1.0))
    r = train(cfg, echo=None)
    assert r.qat_start_step == 2
    assert "qat_enabled: step:2" in (tmp_path / "s" / "train.log").read_text()
    # Time trigger: a 1000 s cap that QAT reaches after 0.1% of it, long before the step fraction.
    cfg = load_config("tiny", overrides=tiny_overrides(train_shards, tmp_path / "t", iterations=4, qat_policy="int6+tok8",
                                                        qat_start_frac=1.0, qat_start_time_frac=0.0001,
                                                        max_wallclock_seconds=1000))
    r = train(cfg, echo=None)
    assert r.qat_start_step == 1 and "(time trigger)" in (tmp_path / "t" / "train.log").read_text()
    meta = json.loads((tmp_path / "t" / "final_model.json").read_text())
    assert meta["training"]["qat_start_step"] == 1 and meta["training"]["qat_policy"] == "int6+tok8"


def test_wallclock_cap_stops_training(tmp_path, train_shards):
    cfg = load_config("tiny", overrides=tiny_overrides(train_shards, tmp_path, iterations=1000, max_wallclock_seconds=0.5,
                                                        warmdown_iters=3))
    r = train(cfg, echo=None)
    assert r.stopped_early and 1 <= r.steps < 1000
    assert re.search(r"stopping_early: wallclock_cap train_time:\d+ms step:\d+/1000", (tmp_path / "train.log").read_text())


# -- bad input: one clear error before any compute -------------------------------------------


def test_bad_inputs_fail_before_compute(tmp_path, train_shards, val_path, heldout_path, sp1024_path, monkeypatch):
    heldout = heldout_path
    def run(**extra):
        train(load_config("tiny", overrides=tiny_overrides(train_shards, tmp_path / "out", **extra)), echo=None)

    with pytest.raises(GolfpackError, match="no shard files match"):
        run(train_files=str(tmp_path / "missing_*.bin"))
    with pytest.raises(GolfpackError, match="not divisible into sequences"):
        run(train_batch_tokens=3000)
    with pytest.raises(GolfpackError, match="tokenizer .* has vocab 1024 but the model's vocab_size is 2048"):
        run(vocab_size=2048, tokenizer_path=str(sp1024_path))
    with pytest.raises(GolfpackError, match="token id \\d+ >= vocab_size 512"):
        run(vocab_size=512)
    with pytest.raises(GolfpackError, match="never train on the val tokens"):
        run(train_files=val_path)
    with pytest.raises(GolfpackError, match="val_batch_tokens 256 gives each rank less than one sequence.* at least 8 x train_seq_len 64 = 512"):
        run(val_files=heldout, tokenizer_path=str(sp1024_path), val_batch_tokens=256)
    with pytest.raises(GolfpackError, match="tokenizer .*: file not found"):
        run(tokenizer_path=str(tmp_path / "nope.model"))
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(GolfpackError, match="world size 3 does not divide 8"):
        run()
    assert not (tmp_path / "out").exists()  # nothing was created


def test_cli_error_is_one_line(tmp_path):
    from click.testing import CliRunner

    from golfpack.cli import main

    res = CliRunner().invoke(main, ["train", "--config", "tiny", "--train", str(tmp_path / "none_*.bin"), "--val", "", "-o", str(tmp_path)])
    assert res.exit_code == 1
    assert res.output.strip().startswith("Error: no shard files match") and "Traceback" not in res.output


# -- distributed: torchrun x2 (gloo) == 1 process with grad accumulation ------------------------


@pytest.mark.slow  # ~35 s: one run here plus a two-process torchrun
def test_torchrun_two_processes_match_one_process(tmp_path, train_shards):
    sets = tiny_overrides(train_shards, tmp_path / "one", iterations=6, train_log_every=1)
    one = train(load_config("tiny", overrides=sets), echo=None)
    sets2 = tiny_overrides(train_shards, tmp_path / "two", iterations=6, train_log_every=1)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "golfpack.trainer",
           "--config", "tiny"] + [a for s in sets2 for a in ("--set", s)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = (tmp_path / "two" / "train.log").read_text()
    assert "world_size:2 grad_accum_steps:4" in log
    two_losses = [float(m.group(3)) for m in map(TRAIN_RE.match, log.splitlines()) if m]
    one_losses = [l for _, l in one.train_losses]
    assert len(two_losses) == 6
    for a, b in zip(one_losses, two_losses):
        assert abs(a - b) < 2e-4, (one_losses, two_losses)
    sd1 = load_state_dict(tmp_path / "one" / "final_model.pt")
    sd2 = load_state_dict(tmp_path / "two" / "final_model.pt")
    # The two runs differ only in the order float32 gradient sums are taken (8 micro-batches in one
    # process vs 4 per rank + an all-reduce). Adam and Muon normalise the gradient, so an element whose
    # gradient is mostly that rounding noise can still move by a visible part of its step: compare each
    # tensor's difference with how far training moved it (from the seeded init), not with a fixed atol.
    # A missing or wrong all-reduce moves the two runs apart by a sizeable fraction of the update.
    from golfpack.trainer import loop

    cfg = load_config("tiny", overrides=sets)
    loop._seed_all(cfg.seed)
    sd0 = GPT(cfg.model_config()).state_dict()
    for k in sd1:
        a, b, w0 = sd1[k].double(), sd2[k].double(), sd0[k].double()
        diff, moved = (a - b).abs(), (a - w0).abs()
        ratio = float(diff.norm() / moved.norm().clamp_min(1e-12))
        msg = (f"{k}: max |one - two| {float(diff.max()):.3g}, |one - two| / |one - init| {ratio:.3g} "
               f"(max move {float(moved.max()):.3g})")
        assert float(moved.max()) > 0, msg  # every tensor trains: the init is the right reference
        assert ratio < 1e-3, msg
        assert float(diff.max()) <= 1e-2 * float(moved.max()), msg


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path, train_shards):
    """compile=on (model + Newton-Schulz) with QAT from step 1 follows the eager run (CPU inductor: slow)."""
    losses = {}
    for mode in ("off", "on"):
        cfg = load_config("tiny", overrides=tiny_overrides(train_shards, tmp_path / mode, iterations=4, compile=mode,
                                                            warmup_steps=1, qat_policy="int6+tok8", qat_start_frac=0.25))
        r = train(cfg, echo=None)
        assert r.qat_start_step == 1
        losses[mode] = [l for _, l in r.train_losses]
    for a, b in zip(losses["off"], losses["on"]):
        assert abs(a - b) < 2e-3, losses
