"""Quantizers: baseline int8 exactness, per-tensor range, clip rules, passthrough, GPTQ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from golfpack.formats.checkpoint import load_state_dict
from golfpack.formats.legacy import dequantize_int8_ptz, read_int8_ptz
from golfpack.formats.spec import TensorSpec
from golfpack.packer.policy import Policy
from golfpack.packer.quantize import (
    fake_quantize,
    gptq_quantize,
    hessian_from_activations,
    quantize_rows,
    quantize_tensor,
)
from tests.conftest import shared_file

# ------------------------------------------------------------------------------------------------
# An independent re-implementation of the challenge baseline's quantize_state_dict_int8 +
# dequantize_state_dict_int8 (train_gpt.py), written from its documented rules, used as the oracle.

_CONTROL = ("attn_scale", "attn_scales", "mlp_scale", "mlp_scales", "resid_mix", "resid_mixes", "q_gain", "skip_weight", "skip_weights")


def _oracle_roundtrip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for name, t in sd.items():
        t = t.detach().cpu().contiguous()
        if not t.is_floating_point():
            out[name] = t
            continue
        if t.numel() <= 65_536:
            if any(p in name for p in _CONTROL):
                out[name] = t.float()  # baseline keeps these fp32 and records no original dtype
            elif t.dtype in (torch.float32, torch.bfloat16):
                out[name] = t.to(torch.float16).to(t.dtype)
            else:
                out[name] = t
            continue
        x = t.float()
        if x.ndim == 2:
            c = torch.quantile(x.abs(), 0.9999984, dim=1)
            s = (c / 127.0).clamp_min(1.0 / 127.0)
            q = torch.clamp(torch.round(torch.maximum(torch.minimum(x, c[:, None]), -c[:, None]) / s[:, None]), -127, 127).to(torch.int8)
            out[name] = (q.float() * s.to(torch.float16).float()[:, None]).to(t.dtype)
        else:
            c = float(torch.quantile(x.abs().flatten(), 0.9999984).item())
            s = torch.tensor(c / 127.0 if c > 0 else 1.0, dtype=torch.float32)
            q = torch.clamp(torch.round(torch.clamp(x, -c, c) / s), -127, 127).to(torch.int8)
            out[name] = (q.float() * float(s.item())).to(t.dtype)
    return out


def _pack_dequant(sd: dict[str, torch.Tensor], policy: Policy) -> dict[str, torch.Tensor]:
    specs = policy.resolve(sd)
    return {n: quantize_tensor(n, t, specs[n]).dequantize() for n, t in sd.items()}


def _assert_same(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], check_dtype: bool = True) -> None:
    assert set(got) == set(want)
    for n in want:
        assert got[n].shape == want[n].shape, n
        if check_dtype:
            assert got[n].dtype == want[n].dtype, n
        assert torch.equal(got[n].to(want[n].dtype), want[n]), n


def _synthetic_big_sd() -> dict[str, torch.Tensor]:
    # Exercises every baseline branch the small real checkpoints do not: a >65,536-element bf16 matrix,
    # an fp32 matrix with outliers and an all-zero row, a big 1-D tensor (per-tensor path), a big control
    # tensor (quantized - the baseline only keeps control names when small), an fp16 small tensor, ints.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(300, 256, generator=g) * 0.05
    w[3, 7] = 4.0
    w[5] = 0.0
    return {
        "tok_emb.weight": (torch.randn(512, 160, generator=g) * 0.8).to(torch.bfloat16),
        "blocks.0.mlp.fc.weight": w,
        "big_vector": torch.randn(70_000, generator=g) * 0.3,
        "blocks.0.attn_scale_big": torch.rand(300, 250, generator=g),
        "blocks.0.attn_scale": torch.rand(64, generator=g),
        "small_half": torch.randn(10, 10, generator=g).half(),
        "step": torch.tensor([7, 8, 9], dtype=torch.int64),
    }


def test_int8_preset_equals_oracle_on_synthetic_branches() -> None:
    sd = _synthetic_big_sd()
    _assert_same(_pack_dequant(sd, Policy.preset("int8")), _oracle_roundtrip(sd))


@pytest.mark.parametrize("which", ["nolanvild", "taleef"])
def test_int8_preset_equals_oracle_and_shipped_ptz(which: str, request: pytest.FixtureRequest) -> None:
    pt = request.getfixturevalue(f"{which}_pt")
    ptz = request.getfixturevalue(f"{which}_ptz")
    sd = load_state_dict(pt)
    ours = _pack_dequant(sd, Policy.preset("int8"))
    _assert_same(ours, _oracle_roundtrip(sd))
    # ...and against the .int8.ptz the same training run shipped, via our legacy reader.
    shipped = dequantize_int8_ptz(read_int8_ptz(ptz))
    _assert_same(ours, shipped)


def test_nolanvild_ptz_really_has_an_int8_tensor(nolanvild_ptz) -> None:
    obj = read_int8_ptz(nolanvild_ptz)
    assert list(obj["quantized"]) == ["tok_emb.weight"]
    rec = quantize_tensor("tok_emb.weight", load_state_dict(str(nolanvild_ptz).replace(".int8.ptz", ".pt"))["tok_emb.weight"], TensorSpec.parse("int8"))
    assert np.array_equal(rec.q, obj["quantized"]["tok_emb.weight"].numpy())
    assert np.array_equal(rec.scales, obj["scales"]["tok_emb.weight"].numpy())


@pytest.mark.parametrize("clip", ["quantile", "absmax", "mse"])
@pytest.mark.parametrize("shape", [(5000,), (4, 5, 6), ()])
def test_per_tensor_fallback_keeps_the_spec_range(clip: str, shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(1)
    t = torch.randn(shape, generator=g) * 3 if shape else torch.tensor(2.5)
    rec = quantize_tensor("v", t, TensorSpec("int", bits=6, clip=clip))
    assert rec.q is not None and rec.scales is not None
    assert rec.q.ndim == 1 and rec.scales.dtype == np.float32 and rec.scales.shape == (1,)
    assert int(np.abs(rec.q).max()) <= 31
    if t.numel() > 100:
        assert int(np.abs(rec.q).max()) >= 25  # uses the int6 range, not a squeezed int8 one
    deq = rec.dequantize()
    assert deq.shape == t.shape and deq.dtype == t.dtype
    step = float(rec.scales[0])
    assert float((deq - t).abs().max()) <= 0.5 * step + 1e-6 or clip != "absmax"


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("clip", ["quantile", "absmax", "mse"])
def test_levels_stay_in_range_and_scales_are_fp16(bits: int, clip: str) -> None:
    g = torch.Generator().manual_seed(bits)
    w = torch.randn(33, 70, generator=g) * torch.logspace(-3, 1, 33)[:, None]
    q, s = quantize_rows(w, bits, clip)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and s.dtype == torch.float16 and s.shape == (33,)
    assert int(q.abs().max()) <= qmax and int(q.abs().max()) == qmax or clip == "quantile"
    assert bool((s > 0).all())


def test_quantile_rule_generalises_scale_floor_to_one_over_qmax() -> None:
    w = torch.full((2, 100), 0.01)
    w[1] = torch.linspace(-3.1, 3.1, 100)
    q, s = quantize_rows(w, 6, "quantile")
    assert s[0].item() == pytest.approx(1 / 31, rel=1e-3)  # floor 1/qmax, as 1/127 for int8
    assert torch.equal(q[0], torch.zeros(100, dtype=torch.int8))  # 0.01 / (1/31) rounds to 0
    assert s[1].item() == pytest.approx(3.1 / 31, rel=1e-3)  # above the floor: clip / qmax


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 8])
def test_mse_clip_never_worse_than_absmax_on_heavy_tails(bits: int) -> None:
    torch.manual_seed(100 + bits)  # StudentT.sample takes no generator: seed the global one
    # Student-t(2.5) rows with per-row scales spanning 3 decades: heavy tails make clipping worthwhile.
    w = torch.distributions.StudentT(2.5).sample((64, 512)) * torch.logspace(-3, 0, 64)[:, None]
    errs = {}
    for clip in ("absmax", "mse"):
        q, s = quantize_rows(w, bits, clip)
        errs[clip] = ((q.float() * s.float()[:, None] - w) ** 2).sum(dim=1)
    assert bool((errs["mse"] <= errs["absmax"]).all())
    assert float(errs["mse"].sum()) <= float(errs["absmax"].sum())
    if bits <= 4:  # where the grid is coarse, clipping the tails pays a lot
        assert float(errs["mse"].sum()) < 0.8 * float(errs["absmax"].sum())


@pytest.mark.parametrize("spec", ["int8", "int6", "int5:mse", "int4:absmax", "fp16", "bf16", "fp32"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fake_quantize_is_what_pack_stores(spec: str, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(3)
    for shape in [(40, 24), (24,)]:
        w = (torch.randn(shape, generator=g) * 0.2).to(dtype)
        ts = TensorSpec.parse(spec)
        fq = fake_quantize(w, ts)
        rec = quantize_tensor("w", w, ts)
        assert fq.dtype == dtype and fq.shape == w.shape
        assert torch.equal(fq, rec.dequantize())


def test_passthrough_round_trips() -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(7, 5, generator=g)
    assert torch.equal(quantize_tensor("x", x, TensorSpec.parse("fp32")).dequantize(), x)
    assert torch.equal(quantize_tensor("x", x, TensorSpec.parse("fp16")).dequantize(), x.half().float())
    assert torch.equal(quantize_tensor("x", x, TensorSpec.parse("bf16")).dequantize(), x.bfloat16().float())
    xb = x.bfloat16()
    rec = quantize_tensor("x", xb, TensorSpec.parse("exact"))
    assert rec.data is not None and rec.data.dtype == np.uint16
    assert torch.equal(rec.dequantize(), xb)
    ints = torch.tensor([[1, -2], [3, 2**40]], dtype=torch.int64)
    assert torch.equal(quantize_tensor("i", ints, TensorSpec.parse("exact")).dequantize(), ints)
    with pytest.raises(ValueError, match="exact"):
        quantize_tensor("i", ints, TensorSpec.parse("int8"))
    with pytest.raises(ValueError, match="exact"):
        quantize_tensor("i", ints, TensorSpec.parse("fp16"))


def test_gptq_beats_plain_rounding_on_correlated_inputs() -> None:
    g = torch.Generator().manual_seed(5)
    rows, cols, n = 48, 64, 4096
    mix = torch.randn(cols, cols, generator=g) / cols**0.5
    x = torch.randn(n, cols, generator=g) @ (torch.eye(cols) + 2 * mix)  # strongly correlated features
    w = torch.randn(rows, cols, generator=g) * 0.1
    H = hessian_from_activations(x)
    for bits in (3, 4, 6):
        qg, sg = gptq_quantize(w, H, bits, clip="mse")
        qr, sr = quantize_rows(w, bits, "mse")
        assert torch.equal(sg, sr)  # same scales; only the level choice differs
        assert int(qg.abs().max()) <= 2 ** (bits - 1) - 1
        out_err = lambda q, s: float(((x @ (q.float() * s.float()[:, None] - w).T) ** 2).mean())  # noqa: E731
        assert out_err(qg, sg) < 0.9 * out_err(qr, sr)
    rec = quantize_tensor("w", w, TensorSpec.parse("int4:mse+gptq"), hessian=H)
    assert rec.q is not None and int(np.abs(rec.q).max()) <= 7
    assert torch.equal(torch.from_numpy(rec.q), gptq_quantize(w, H, 4, clip="mse")[0])
    # on the baseline's quantile grid too: same scales as plain int6, better outputs
    qq, sq = gptq_quantize(w, H, 6, clip="quantile")
    qr, sr = quantize_rows(w, 6, "quantile")
    assert torch.equal(sq, sr)
    assert float(((x @ (qq.float() * sq.float()[:, None] - w).T) ** 2).mean()) < float(((x @ (qr.float() * sr.float()[:, None] - w).T) ** 2).mean())
    with pytest.raises(ValueError, match="needs a Hessian"):
        quantize_tensor("w", w, TensorSpec.parse("int4+gptq"))
    # non-2-D tensors have no columns to trade error between: plain rounding, no Hessian needed
    v = torch.randn(64, generator=g)
    assert torch.equal(torch.from_numpy(quantize_tensor("v", v, TensorSpec.parse("int6+gptq")).q),
                       torch.from_numpy(quantize_tensor("v", v, TensorSpec.parse("int6")).q))


# ------------------------------------------------------------------------------------------------
# the fast paths give the answers of the plain ones, bit for bit


def _mse_scales_one_ratio_at_a_time(w: torch.Tensor, qmax: int, weight: torch.Tensor | None) -> torch.Tensor:
    # the mse search as first written: one clip ratio at a time, strict '<' (ties keep the larger clip)
    from golfpack.packer.quantize import MSE_CLIP_RATIOS, _stored_scale

    absmax = w.abs().amax(dim=1)

    def err_of(s16: torch.Tensor) -> torch.Tensor:
        s = s16.float()[:, None]
        e = (torch.clamp(torch.round(w / s), -qmax, qmax) * s - w) ** 2
        return (e * weight[None, :]).sum(dim=1) if weight is not None else e.sum(dim=1)

    best_s = _stored_scale(absmax, qmax)
    best_err = err_of(best_s)
    for r in MSE_CLIP_RATIOS[1:]:
        s16 = _stored_scale(absmax * r, qmax)
        err = err_of(s16)
        better = err < best_err
        best_s = torch.where(better, s16, best_s)
        best_err = torch.where(better, err, best_err)
    return best_s


def test_vectorized_mse_search_picks_the_scales_of_the_one_ratio_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import golfpack.packer.quantize as Q

    g = torch.Generator().manual_seed(11)
    w = torch.randn(37, 90, generator=g) * torch.rand(37, 1, generator=g)
    w[4] = 0.0  # an all-zero row: the tiny floor, q = 0
    w[5, 3] = 9.0  # an outlier row: a small clip wins
    w[6] = torch.round(w[6] * 8) / 8  # ties between ratios
    hd = torch.rand(90, generator=g)
    monkeypatch.setattr(Q, "_MSE_CHUNK", 7 * 90 * len(Q.MSE_CLIP_RATIOS))  # several row chunks, the last one short
    for bits in (8, 4, 2):
        qmax = Q.qmax_for(bits)
        for weight in (None, hd):
            assert torch.equal(Q._rows_mse_scales(w, qmax, weight), _mse_scales_one_ratio_at_a_time(w, qmax, weight))


def _gptq_row_major(w: torch.Tensor, H: torch.Tensor, bits: int, clip: str, block_size: int) -> torch.Tensor:
    # GPTQ levels as first written (row-major weights, one candidate, act order, per-row scales)
    from golfpack.packer.quantize import _damped_inverse_factor, qmax_for

    qmax = qmax_for(bits)
    rows, cols = w.shape
    Hm = H.double().clone()
    hdiag = torch.diag(Hm).float().clone()
    W = w.double().clone()
    dead = torch.diag(Hm) == 0
    Hm[dead, dead] = 1.0
    W[:, dead] = 0.0
    s = quantize_rows(w.float(), bits, clip, hdiag)[1].double()
    perm = torch.argsort(-torch.diag(Hm), stable=True)
    W, Hm = W[:, perm], Hm[perm][:, perm]
    Hinv = _damped_inverse_factor(Hm, 0.01)[0]
    Qm = torch.zeros_like(W)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, E1, Hinv1 = W[:, i1:i2].clone(), torch.zeros(rows, i2 - i1, dtype=torch.float64), Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = W1[:, i]
            qc = torch.clamp(torch.round(col / s), -qmax, qmax)
            Qm[:, i1 + i] = qc
            err = (col - qc * s) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            E1[:, i] = err
        W[:, i1:i2] = W1
        W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
    return Qm[:, torch.argsort(perm)].to(torch.int8)


def _gptq_case() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    rows, cols = 24, 70
    x = torch.randn(300, cols, generator=g) @ (torch.eye(cols) + torch.randn(cols, cols, generator=g) / cols)
    x[:, 9] = 0.0  # a dead input column
    w = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 0.1
    return w, hessian_from_activations(x)


def test_gptq_levels_are_those_of_the_row_major_loop() -> None:
    w, H = _gptq_case()
    for bits, clip in ((6, "quantile"), (4, "mse"), (3, "hmse"), (5, "sd12")):
        assert torch.equal(gptq_quantize(w, H, bits, clip=clip, block_size=32)[0], _gptq_row_major(w, H, bits, clip, 32))


def test_gptq_many_equals_one_candidate_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    import golfpack.packer.quantize as Q

    w, H = _gptq_case()
    for group, act_order in ((0, True), (0, False), (16, True)):
        specs = [(6, "mse"), (4, "hmse"), (3, "sd12"), (5, "absmax")] + ([] if group else [(8, "quantile")])
        alone = [gptq_quantize(w, H, b, clip=c, group=group, act_order=act_order, block_size=32) for b, c in specs]
        for stack in (Q.GPTQ_STACK_VALUES, 2 * w.numel()):  # one stack; stacks of two candidates
            monkeypatch.setattr(Q, "GPTQ_STACK_VALUES", stack)
            info: dict = {}
            many = Q.gptq_quantize_many(w, H, specs, group=group, act_order=act_order, block_size=32, info=info)
            assert info["damp"] == 0.01 and len(many) == len(specs)
            for (qa, sa), (qm, sm) in zip(alone, many):
                assert torch.equal(qa, qm) and torch.equal(sa, sm)


# ----------------------------------------------------------------------------------------------
# row_quantile: the top-k shortcut equals torch.quantile to the bit


def test_row_quantile_equals_torch_quantile_on_a_real_checkpoint() -> None:
    from golfpack.packer.quantize import BASELINE_CLIP_Q, row_quantile

    sd = load_state_dict(shared_file("checkpoints/nolanvild_final_model.pt"))
    mats = [t.float().abs() for t in sd.values() if t.ndim == 2 and t.is_floating_point()]
    assert len(mats) > 20
    for a in mats:
        for q in (BASELINE_CLIP_Q, 0.9999, 1.0):
            assert torch.equal(row_quantile(a, q), torch.quantile(a, q, dim=1))


def test_row_quantile_edge_cases_fall_back_or_match() -> None:
    from golfpack.packer.quantize import BASELINE_CLIP_Q, row_quantile

    g = torch.Generator().manual_seed(0)
    cases = [torch.randn(5, 1, generator=g), torch.randn(7, 3, generator=g), torch.randn(4, 4096, generator=g),
             torch.zeros(3, 64), torch.randn(2, 300, generator=g)]
    bad = torch.randn(3, 50, generator=g)
    bad[0, 4], bad[1, 7] = float("nan"), float("inf")
    cases.append(bad)
    for a in cases:
        for q in (0.0, 0.5, 0.99, BASELINE_CLIP_Q, 1.0):  # low q: more than _TOPK_MAX ranks from the end -> torch
            got, want = row_quantile(a, q), torch.quantile(a, q, dim=1)
            assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())
