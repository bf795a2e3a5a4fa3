"""Quantized sub-scales (`int<b>:g<N>s<k>`): no floor on small-range rows, every clip rule, GPTQ rounds each
group with its dequantized sub-scale, fake_quantize matches the record, packing twice gives the same bytes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from golfpack.formats.qgv3 import encode_qgv3
from golfpack.formats.spec import TensorSpec
from golfpack.packer.quantize import (
    dequant_subscales,
    fake_quantize,
    gptq_quantize,
    quantize_groups,
    quantize_groups_sub,
    quantize_subscales,
    quantize_tensor,
)


def _small_rows(seed: int = 0) -> torch.Tensor:
    """Rows with absmax 1e-4 .. 0.08 (well below 1), groups of very different ranges inside a row."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(12, 256, generator=g) * torch.logspace(-4.5, -1.5, 12)[:, None]
    return w * torch.linspace(0.05, 1.0, 256)[None, :]  # later groups of a row are wider than earlier ones


@pytest.mark.parametrize("clip", ["absmax", "mse", "hmse", "sd12"])
def test_small_range_rows_get_no_floor_above_what_each_group_needs(clip) -> None:
    w = _small_rows()
    bits, group, k = 6, 32, 6
    hdiag = torch.linspace(0.5, 2.0, 256)
    _, need = quantize_groups(w, bits, clip, group, hdiag)  # the fp16 scale each group needs under this rule
    q, s16, sub = quantize_groups_sub(w, bits, clip, group, k, hdiag)
    assert s16.dtype == torch.float16 and s16.shape == (12,) and sub.dtype == torch.uint8 and sub.shape == (12, 8)
    assert int(sub.min()) >= 1 and int(sub.max()) <= 63
    S = s16.float()
    # the row scale follows the row: the largest group fits in 63 steps, and one fp16 step up at most
    assert torch.all(S[:, None] * 63 >= need.float().amax(dim=1, keepdim=True))
    assert torch.all(S <= need.float().amax(dim=1) / 63 * (1 + 2**-10) + 2**-24)
    # each group's dequantized scale is the step at or just above what it needs: never clipped harder than its rule
    got = dequant_subscales(s16, sub)
    ok = ((got >= need.float()) & (got - need.float() < S[:, None] * (1 + 1e-6))) | ((sub == 63) & (got <= need.float()))
    assert bool(ok.all())
    # the levels are not swallowed: every row uses (nearly) the levels fp16 group scales give it, where a 1/qmax
    # floor would leave the rows of absmax < 1/62 all zero
    q_ref = quantize_groups(w, bits, clip, group, hdiag)[0]
    assert torch.all(q.abs().amax(dim=1) >= q_ref.abs().amax(dim=1) - 1) and int(q.abs().amax(dim=1).min()) >= 5
    # and the error stays close to fp16 group scales on every row
    rec = quantize_tensor("w", w, TensorSpec("int", bits=bits, clip=clip, group=group, subscale=k))
    ref = quantize_tensor("w", w, TensorSpec("int", bits=bits, clip=clip, group=group))
    e_sub = ((rec.dequantize() - w) ** 2).sum(dim=1)
    e_ref = ((ref.dequantize() - w) ** 2).sum(dim=1)
    assert torch.all(e_sub <= 1.6 * e_ref + 1e-30), (e_sub / e_ref).max()


def test_row_scale_rounds_up_so_the_largest_group_fits() -> None:
    d = torch.tensor([[1.0, 0.5, 0.001], [3.0e-3, 3.1e-3, 2.9e-3]])
    s16, sub = quantize_subscales(d, 4)
    assert torch.all(s16.float() * 15 >= d.amax(dim=1))
    assert sub.tolist()[0][0] == 15 and sub.tolist()[0][2] == 1  # the tiny group gets the smallest step, not 0
    assert torch.equal(dequant_subscales(s16, sub), s16.float()[:, None] * sub.float())


def test_fake_quantize_and_the_record_agree_exactly() -> None:
    w = _small_rows(1)[:, :200].to(torch.bfloat16)
    for label in ("int5:g64s6", "int4:g32s4:mse", "int6:g128s8:sd12", "int3:g256s2"):
        spec = TensorSpec.parse(label)
        rec = quantize_tensor("w", w, spec)
        assert torch.equal(fake_quantize(w, spec), rec.dequantize()), label
        want = dequant_subscales(torch.from_numpy(rec.scales), torch.from_numpy(rec.subscales))
        assert torch.equal(rec.group_scales(), want)


def _layer(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    cols = 96
    A = torch.randn(cols, cols, generator=g) / cols**0.5
    x = torch.randn(2048, cols, generator=g) @ (A + 0.5 * torch.eye(cols))  # correlated inputs: a known covariance
    H = 2.0 / x.shape[0] * (x.T @ x)
    w = torch.randn(16, cols, generator=g) * 0.03
    return w, H, x


@pytest.mark.parametrize("clip", ["absmax", "mse"])
def test_gptq_with_subscales_rounds_on_the_dequantized_group_scale_and_beats_rtn(clip) -> None:
    w, H, x = _layer()
    spec = TensorSpec("int", bits=3, clip=clip, group=32, subscale=4, gptq=True)
    rec = quantize_tensor("w", w, spec, hessian=H)
    assert rec.subscales is not None and rec.scales.dtype == np.float16 and rec.scales.shape == (16,)
    # the row scale is fixed first from the unupdated weights (the same S the plain sub-scale rule gives)
    s16 = quantize_groups_sub(w, 3, clip, 32, 4)[1]
    assert np.array_equal(rec.scales, s16.numpy())
    # gptq returns the dequantized group scales S * sub: the grid every column was rounded on
    q, gs = gptq_quantize(w, H, 3, clip=clip, group=32, sub_rows=s16, subscale=4)
    assert torch.equal(gs, dequant_subscales(s16, torch.from_numpy(rec.subscales))) and np.array_equal(q.numpy(), rec.q)
    rtn = quantize_tensor("w", w, spec.rounded())
    err = lambda r: float(((x @ (r.dequantize() - w).T) ** 2).mean())  # noqa: E731
    assert err(rec) < 0.9 * err(rtn)


def test_packing_the_same_specs_twice_gives_identical_bytes() -> None:
    w, H, _ = _layer(4)
    specs = ["int6:g32s6", "int5:g64s6:mse", "int4:g32s4:sd12+gptq", "int6:g64s6:hmse+gptq"]
    a = encode_qgv3([quantize_tensor(f"t{i}", w, TensorSpec.parse(s), hessian=H) for i, s in enumerate(specs)], codec="lzma")
    b = encode_qgv3([quantize_tensor(f"t{i}", w.clone(), TensorSpec.parse(s), hessian=H.clone()) for i, s in enumerate(specs)],
                    codec="lzma")
    assert a == b
