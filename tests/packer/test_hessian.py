"""GPTQ calibration: Hessians hooked from the real model, pinned tokens, and pack/replay with +gptq specs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from golfpack.cli import main
from golfpack.errors import GolfpackError
from golfpack.formats.checkpoint import load_state_dict
from golfpack.formats.shards import write_shard
from golfpack.loading import infer_config
from golfpack.model import build_model
from golfpack.packer import calibration as S
from golfpack.packer.calibration import GptqCalibration, calibration_batch
from golfpack.packer.hessian import collect_hessians, weight_inputs


@pytest.fixture(scope="module")
def nolan(nolanvild_pt):
    sd = load_state_dict(nolanvild_pt)
    cfg = infer_config(sd, activation="relu3")
    return sd, cfg, build_model(cfg, sd)


@pytest.fixture(scope="module")
def calib_shard(tmp_path_factory, sp1024_model):
    # train-style shard from Python's docs (never val tokens)
    d = tmp_path_factory.mktemp("calib")
    write_shard(d / "docs_train_000000.bin", S.pydoc_tokens(str(sp1024_model)).astype(np.uint16))
    return str(d / "docs_train_*.bin")


def test_every_linear_weight_is_fed(nolan) -> None:
    sd, cfg, model = nolan
    feeds = weight_inputs(model)
    two_d = {n for n, t in sd.items() if t.ndim == 2 and "skip" not in n and "resid_mix" not in n}
    assert set(feeds) == two_d  # 3 blocks x (c_q, c_k, c_v, proj, fc, proj) + tied tok_emb
    assert len(feeds) == 19


def test_hessians_match_a_direct_computation(nolan) -> None:
    sd, cfg, model = nolan
    toks = np.random.default_rng(0).integers(0, 1024, size=4 * 65)
    batch = S.make_batch(toks, 4, 64)
    H = collect_hessians(model, batch, micro=3)
    with torch.no_grad():
        h = model.hidden(batch.inputs).reshape(-1, cfg.model_dim).double()
    assert torch.allclose(H["tok_emb.weight"], 2.0 / h.shape[0] * h.T @ h, rtol=1e-9, atol=1e-12)
    for n, m in H.items():
        cols = sd[n].shape[1]
        assert m.shape == (cols, cols) and m.dtype == torch.float64
        assert torch.equal(m, m.T) and float(torch.linalg.eigvalsh(m).min()) > -1e-9
    # the same call gives the same bits (pack replays the search's GPTQ levels); another micro-batch
    # split changes fp32 activations in their last bits only
    one = collect_hessians(model, batch, ["blocks.1.mlp.fc.weight"], micro=3)["blocks.1.mlp.fc.weight"]
    assert torch.equal(one, H["blocks.1.mlp.fc.weight"])
    assert torch.allclose(collect_hessians(model, batch, ["blocks.1.mlp.fc.weight"])["blocks.1.mlp.fc.weight"], one, rtol=1e-5)


def test_calibration_refuses_val_and_other_tokens(calib_shard, tmp_path) -> None:
    cal = GptqCalibration(source=calib_shard, batch=4, seq=64)
    b = calibration_batch(cal, vocab_size=1024)
    pinned = GptqCalibration(source=calib_shard, batch=4, seq=64, digest=b.digest)
    assert calibration_batch(pinned).digest == b.digest
    other = tmp_path / "other_train_000000.bin"
    write_shard(other, np.arange(5000, dtype=np.uint16) % 1024)
    with pytest.raises(GolfpackError, match="differ from the ones"):
        calibration_batch(pinned, source=str(other))
    with pytest.raises(GolfpackError, match="validation"):
        calibration_batch(GptqCalibration(source=str(tmp_path / "fineweb_val_*.bin")))


def test_pack_gptq_needs_calibration_then_records_it(nolanvild_pt, calib_shard, tmp_path) -> None:
    from golfpack.loading import load_any

    run = lambda *a: CliRunner().invoke(main, list(a))  # noqa: E731
    out = tmp_path / "g.qg3"
    res = run("pack", str(nolanvild_pt), "--activation", "relu3", "--set", "blocks.*.mlp.*=int5+gptq", "-o", str(out))
    assert res.exit_code != 0 and "need calibration tokens: pass calib=" in res.output and res.output.strip().endswith("(--calib)") and not out.exists()
    res = run("pack", str(nolanvild_pt), "--activation", "relu3", "--set", "blocks.*.mlp.*=int5+gptq",
              "--calib", calib_shard, "--json", "-o", str(out))
    assert res.exit_code == 0, res.output
    art = load_any(out).artifact
    cal = art.policy["calibration"]
    assert cal["source"] == calib_shard and (cal["batch"], cal["seq"]) == (32, 256) and len(cal["digest"]) == 64
    assert {e["spec"] for e in art.header["tensors"] if ".mlp." in e["name"]} == {"int5+gptq"}
    # GPTQ moved levels relative to plain int5 rounding, on the same grid (same scales)
    plain = tmp_path / "p.qg3"
    assert run("pack", str(nolanvild_pt), "--activation", "relu3", "--set", "blocks.*.mlp.*=int5", "-o", str(plain)).exit_code == 0
    a = {r.name: r for r in art.records}
    b = {r.name: r for r in load_any(plain).artifact.records}
    fc = "blocks.0.mlp.fc.weight"
    assert np.array_equal(a[fc].scales, b[fc].scales) and not np.array_equal(a[fc].q, b[fc].q)
    # the artifact's own policy replays byte for byte (it names its calibration)
    pol = tmp_path / "replay.json"
    pol.write_text(json.dumps(art.policy))
    again = tmp_path / "again.qg3"
    assert run("pack", str(nolanvild_pt), "--activation", "relu3", "--policy", str(pol), "-o", str(again)).exit_code == 0
    assert again.read_bytes() == out.read_bytes()


def test_gptq_on_tensors_that_are_not_linear_weights_rounds_them(nolanvild_pt, calib_shard, tmp_path) -> None:
    """A glob like 'blocks.*' also catches gains and resid_mix: GPTQ applies to linear weights only,
    the rest keep round-to-nearest on the same grid (2-D resid_mix included), no error."""
    from golfpack.loading import load_any

    out = tmp_path / "b.qg3"
    res = CliRunner().invoke(main, ["pack", str(nolanvild_pt), "--activation", "relu3", "--policy", "int6",
                                    "--set", "blocks.*=int6+gptq", "--calib", calib_shard, "-o", str(out)])
    assert res.exit_code == 0, res.output
    specs = {e["name"]: e["spec"] for e in load_any(out).artifact.header["tensors"]}
    assert specs["blocks.0.attn.c_q.weight"] == "int6+gptq" and specs["blocks.2.mlp.proj.weight"] == "int6+gptq"
    assert specs["blocks.0.resid_mix"] == "int6" and specs["blocks.0.attn_scale"] == "int6"
