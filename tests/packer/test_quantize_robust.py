"""Floor-free clip rules (sd<k>, hmse, mse, absmax), group-wise scales and GPTQ with act-order/groups/damping.

The weights these rules must survive are small-range rows (absmax well below 1, as in SamTruss_873402c):
the baseline's `quantile` rule floors the scale at 1/qmax there and rounds most weights to zero."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from golfpack.formats.qgv3 import decode_qgv3, encode_qgv3
from golfpack.formats.spec import GROUP_SIZES, TensorSpec
from golfpack.packer.quantize import (
    fake_quantize,
    gptq_quantize,
    hessian_from_activations,
    quantize_groups,
    quantize_rows,
    quantize_tensor,
    row_scales,
)

FLOOR_FREE = ("absmax", "mse", "hmse", "sd4", "sd12")


def _small_rows(rows: int = 64, cols: int = 384, seed: int = 0) -> torch.Tensor:
    # trained-looking rows: absmax 0.02 .. 0.11, a few outliers
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.linspace(0.003, 0.015, rows)[:, None]
    w[::7, ::50] *= 2.0
    return w


def _rel_rms(w: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
    """Per-row rms error as a fraction of the row's range (absmax)."""
    return ((w_hat - w) ** 2).mean(dim=1).sqrt() / w.abs().amax(dim=1)


@pytest.mark.parametrize("clip", FLOOR_FREE)
@pytest.mark.parametrize("bits", [4, 6, 8])
@pytest.mark.parametrize("group", [0, 64])
def test_floor_free_rules_keep_small_range_rows(clip: str, bits: int, group: int) -> None:
    w = _small_rows()
    assert float(w.abs().amax()) < 0.15
    spec = TensorSpec("int", bits=bits, clip=clip, group=group)
    w_hat = fake_quantize(w, spec)
    err = _rel_rms(w, w_hat)
    # absmax-style rules: rms error ~ step / sqrt(12) = absmax / (qmax * 3.5); SDClip k=12 spends range on compression
    bound = {4: 0.2, 6: 0.05, 8: 0.012}[bits]
    assert float(err.max()) < bound, (clip, bits, group, float(err.max()))
    if bits >= 6:
        assert float((w_hat == 0).float().mean()) < 0.5  # most weights keep a non-zero level


def test_quantile_rule_keeps_its_floor_at_int6_and_is_harmless_at_int8() -> None:
    # the seed-exact rule, unchanged: at int6 the 1/31 floor swallows these rows (what the pack warning is for)
    w = torch.randn(64, 384, generator=torch.Generator().manual_seed(4)) * 0.025  # row absmax ~0.1, as SamTruss's
    q6, s6 = quantize_rows(w, 6, "quantile")
    assert torch.all(s6.float() == torch.tensor(1 / 31).half().float())
    e6 = float(_rel_rms(w, q6.float() * s6.float()[:, None]).mean())
    assert float((q6 == 0).float().mean()) > 0.4 and e6 > 0.1  # vs < 0.05 for every floor-free rule
    q8, s8 = quantize_rows(w, 8, "quantile")
    assert float(_rel_rms(w, q8.float() * s8.float()[:, None]).mean()) < 0.3 * e6


def test_sdclip_scale_is_k_std_over_qmax() -> None:
    w = _small_rows()
    s = row_scales(w, 31, "sd12")
    assert torch.equal(s, (12 * w.std(dim=1) / 31).half())
    z = torch.zeros(3, 16)
    q, s = quantize_rows(z, 6, "sd12")  # all-zero rows: a tiny positive scale and zero levels, never NaN
    assert torch.all(q == 0) and torch.all(s.float() > 0)


def test_hmse_minimises_the_hessian_weighted_error() -> None:
    g = torch.Generator().manual_seed(3)
    w = _small_rows(seed=1)
    h = torch.rand(w.shape[1], generator=g) ** 4 * 10  # a few columns matter much more
    werr = lambda q, s: (((q.float() * s.float()[:, None] - w) ** 2) * h).sum(dim=1)  # noqa: E731
    qh, sh = quantize_rows(w, 4, "hmse", h)
    qm, sm = quantize_rows(w, 4, "mse")
    qa, sa = quantize_rows(w, 4, "absmax")
    assert torch.all(werr(qh, sh) <= werr(qm, sm) + 1e-12) and torch.all(werr(qh, sh) <= werr(qa, sa) + 1e-12)
    assert float(werr(qh, sh).sum()) < 0.97 * float(werr(qm, sm).sum())
    # without a Hessian hmse is plain mse
    assert torch.equal(quantize_rows(w, 4, "hmse")[1], sm)


@pytest.mark.parametrize("group", GROUP_SIZES)
def test_groups_scale_each_group_on_its_own(group: int) -> None:
    w = _small_rows(cols=300)  # 300 is a multiple of no group: the last group is short
    q, s = quantize_groups(w, 6, "absmax", group)
    ng = -(-300 // group)
    assert s.shape == (64, ng) and s.dtype == torch.float16 and q.dtype == torch.int8
    for gi in range(ng):
        blk = w[:, gi * group:(gi + 1) * group]
        assert torch.equal(s[:, gi], (blk.abs().amax(dim=1) / 31).half())
    assert int(q.abs().max()) <= 31


def _layer(seed: int = 5, rows: int = 48, cols: int = 256, n: int = 4096):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5
    scale = torch.linspace(0.2, 3.0, cols)[torch.randperm(cols, generator=g)]  # uneven input energy: act-order matters
    x = (torch.randn(n, cols, generator=g) @ (torch.eye(cols) + 2 * mix)) * scale
    w = torch.randn(rows, cols, generator=g) * 0.03  # small-range rows
    return x, w, hessian_from_activations(x)


def _out_err(x, w, w_hat) -> float:
    return float(((x @ (w_hat - w).T) ** 2).mean())


@pytest.mark.parametrize("spec", ["int4:g64+gptq", "int4:g32:mse+gptq", "int5:g128:sd12+gptq", "int4:sd4+gptq",
                                  "int4:hmse+gptq", "int3:g64:hmse+gptq"])
def test_gptq_beats_round_to_nearest_on_a_known_covariance(spec: str) -> None:
    x, w, H = _layer()
    s = TensorSpec.parse(spec)
    info: dict = {}
    rec = quantize_tensor("w", w, s, hessian=H, info=info)
    rtn = quantize_tensor("w", w, s.rounded(), hessian=H)
    assert info["damp"] == 0.01
    assert int(np.abs(rec.q).max()) <= s.qmax
    assert _out_err(x, w, rec.dequantize()) < 0.8 * _out_err(x, w, rtn.dequantize())
    assert torch.equal(fake_quantize(w, s, H), rec.dequantize())  # QAT/bench see exactly what pack stores


def test_gptq_act_order_helps_and_is_deterministic() -> None:
    x, w, H = _layer(seed=9)
    qa, sa = gptq_quantize(w, H, 4, clip="mse", act_order=True)
    qn, sn = gptq_quantize(w, H, 4, clip="mse", act_order=False)
    assert torch.equal(sa, sn)  # per-row scales come from the clip rule alone
    ea, en = _out_err(x, w, qa.float() * sa.float()[:, None]), _out_err(x, w, qn.float() * sn.float()[:, None])
    assert ea < en
    assert torch.equal(gptq_quantize(w, H, 4, clip="mse")[0], qa)


def test_gptq_raises_damping_when_the_cholesky_fails() -> None:
    g = torch.Generator().manual_seed(2)
    cols = 64
    a = torch.randn(16, cols, generator=g)
    H = a.T @ a / 16
    H = H - 0.05 * torch.mean(torch.diag(H)) * torch.eye(cols)  # indefinite: 0.01 and 0.03 cannot fix it, 0.1 can
    w = torch.randn(8, cols, generator=g) * 0.05
    info: dict = {}
    q, s = gptq_quantize(w, H, 6, clip="absmax", info=info)
    assert info["damp"] == 0.1 and torch.isfinite(q.float()).all()
    with pytest.raises(ValueError, match="not positive definite"):
        gptq_quantize(w, -torch.eye(cols), 6, clip="absmax")


@pytest.mark.parametrize("bits", range(2, 9))
def test_group_wise_round_trip_exact_through_qgv3(bits: int) -> None:
    g = torch.Generator().manual_seed(bits)
    records = []
    for group in GROUP_SIZES:
        for cols in (group, 3 * group + 5):  # exact groups and a short last group
            w = torch.randn(7, cols, generator=g) * 0.05
            for clip in ("absmax", "sd12"):
                records.append(quantize_tensor(f"w{group}_{cols}_{clip}", w, TensorSpec("int", bits=bits, clip=clip, group=group)))
    records.append(quantize_tensor("row", torch.randn(5, 40, generator=g), TensorSpec.parse(f"int{bits}")))
    for blocks in ("separate", "solid"):
        art = decode_qgv3(encode_qgv3(records, codec="lzma", blocks=blocks))
        assert [r.name for r in art.records] == [r.name for r in records]
        for a, b in zip(art.records, records):
            assert a.spec == b.spec
            assert np.array_equal(a.q, b.q) and np.array_equal(np.asarray(a.scales).reshape(-1), np.asarray(b.scales).reshape(-1))
            assert torch.equal(a.dequantize(), b.dequantize())
        # the header says the group and the byte count follows rows x ceil(cols / g) fp16 scales
        e = {t["name"]: t for t in art.header["tensors"]}
        assert e["w64_197_absmax"]["scale_group"] == 64 and "scale_group" not in e["row"]
        assert next(r for r in records if r.name == "w32_101_sd12").payload_bytes() == 7 * (3 * 32 + 5) * bits / 8 + 7 * 4 * 2


def test_reader_refuses_a_scale_group_that_does_not_match_the_spec() -> None:
    import copy
    import json

    from golfpack.errors import FormatError
    from golfpack.formats.codecs import decompress
    from golfpack.formats.qgv3_constants import PREAMBLE
    from golfpack.formats.qgv3_read import parse_preamble, validate_header

    w = torch.randn(4, 100, generator=torch.Generator().manual_seed(0))
    data = encode_qgv3([quantize_tensor("w", w, TensorSpec.parse("int6:g64")), quantize_tensor("r", w, TensorSpec.parse("int6"))],
                       codec="raw")
    pre = parse_preamble(memoryview(data))
    h = json.loads(decompress(pre.header_codec, data[PREAMBLE.size:pre.header_end], pre.header_raw))
    start, n = pre.header_end, len(data) - pre.header_end
    validate_header(copy.deepcopy(h), start, n)  # as written: fine
    for i, key, value, msg in [(0, "scale_group", 32, "does not match"), (0, "scale_group", True, "does not match"),
                               (1, "scale_group", 64, "does not match"), (0, "scale_group", None, "lacks scale_group")]:
        bad = copy.deepcopy(h)
        if value is None:
            del bad["tensors"][i][key]
        else:
            bad["tensors"][i][key] = value
        with pytest.raises(FormatError, match=msg):
            validate_header(bad, start, n)
