"""A trained checkpoint goes through the packer (and, once built, `golfpack pack` + `golfpack eval`)."""

from __future__ import annotations

import json

import pytest
import torch

from golfpack.evaluator.dist import DistContext
from golfpack.formats.checkpoint import load_state_dict
from golfpack.formats.shards import load_tokens
from golfpack.loading import infer_config
from golfpack.model import build_model
from golfpack.trainer.loop import _Validator


def _score(cfg, model, heldout_path):
    toks = load_tokens(heldout_path, cfg.val_max_tokens)
    return _Validator(cfg, toks, DistContext())(model)


def test_checkpoint_quantizes_and_qat_forward_equals_the_packed_model(tiny_run, heldout_path):
    from golfpack.packer.pack import quantize_state_dict
    from golfpack.packer.policy import resolve_policy
    from golfpack.trainer.qat import QATModel

    cfg, r = tiny_run
    sd = load_state_dict(r.checkpoint)
    mcfg = infer_config(sd)
    policy = resolve_policy("int6+tok8")
    records = quantize_state_dict(sd, policy.resolve(sd))
    packed = build_model(mcfg, {rec.name: rec.dequantize() for rec in records})
    raw = build_model(mcfg, sd)
    raw_loss, raw_bpb = _score(cfg, raw, heldout_path)
    q_loss, q_bpb = _score(cfg, packed, heldout_path)
    assert raw_loss == pytest.approx(r.val_history[-1]["val_loss"], abs=1e-5)
    assert abs(q_loss - raw_loss) < 0.05 and q_loss != raw_loss  # int6 costs a little, not nothing
    # What QAT trains against is exactly what the packer stores.
    qat = QATModel(raw, policy)
    qat.enable()
    toks = torch.from_numpy(load_tokens(heldout_path, 4 * 64 + 1).astype("int64"))
    x, y = toks[:-1].reshape(4, 64), toks[1:].reshape(4, 64)
    with torch.no_grad():
        assert qat(x, y).item() == pytest.approx(packed(x, y).item(), abs=1e-5)


def test_pack_and_eval_cli_roundtrip(tiny_run, tmp_path, heldout_path, sp1024_path):
    from click.testing import CliRunner

    from golfpack.cli import main

    cfg, r = tiny_run
    art = tmp_path / "model.qg3"
    res = CliRunner().invoke(main, ["pack", str(r.checkpoint), "--policy", "int6+tok8", "-o", str(art), "--json"])
    assert res.exit_code == 0, res.output
    assert art.is_file() and art.stat().st_size < r.checkpoint.stat().st_size / 3
    scores = {}
    for name, path in (("raw", r.checkpoint), ("packed", art)):
        res = CliRunner().invoke(main, ["eval", str(path), "--val", heldout_path, "--tokenizer", str(sp1024_path),
                                        "--seq-len", str(cfg.train_seq_len), "--max-tokens", str(cfg.val_max_tokens), "--json"])
        assert res.exit_code == 0, res.output
        scores[name] = json.loads(res.output)
    # The evaluator scores the raw checkpoint as the trainer's own final validation did.
    assert scores["raw"]["val_loss"] == pytest.approx(r.val_history[-1]["val_loss"], abs=1e-4)
    assert scores["raw"]["val_bpb"] == pytest.approx(r.val_history[-1]["val_bpb"], abs=1e-4)
    assert abs(scores["packed"]["val_loss"] - scores["raw"]["val_loss"]) < 0.05
