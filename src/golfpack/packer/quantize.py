"""Quantizers: a float tensor + a TensorSpec -> a TensorRecord (integer levels + scales, or passthrough).

Integer storage is symmetric: levels -(2^(b-1)-1) .. 2^(b-1)-1 (no -2^(b-1), so the grid is
symmetric and 0 is exact). 2-D tensors get one fp16 scale per row (output channel); every other
shape falls back to ONE fp32 scale per tensor, with the same bit range the spec asks for.

Clip rules (how the per-row range is chosen before rounding):

- `quantile`: the challenge baseline's rule, generalised from int8. For a row r of a 2-D tensor:
  clip = quantile(|w_r|, 0.9999984); scale = max(clip / qmax, 1 / qmax) (fp32); q = round(clamp(w_r,
  -clip, clip) / scale) clamped to +-qmax; the scale is then STORED as fp16 and dequantization uses the
  fp16 value (q was computed with the fp32 one - that is what the baseline does, kept for exactness).
  The scale floor 1/127 of the baseline becomes 1/qmax for other widths (it is "clip >= 1.0" in
  disguise, so the generalisation keeps that meaning); with int8 this is bit-for-bit the baseline.
  Per-tensor fallback: clip = quantile of all |w|; scale = clip / qmax if clip > 0 else 1 (fp32, no floor,
  as the baseline).
- `absmax`: clip = max |w_r|. Scale = clip / qmax rounded to fp16 FIRST, and q computed with that
  stored scale (so the levels are the best ones for the scale the loader will actually use).
- `mse`: per-row search over clip = absmax * r, r in 1.00, 0.98, ... 0.12, choosing for each row the r
  with the lowest squared reconstruction error (with the stored fp16 scale). r = 1 is exactly the absmax
  candidate, so `mse` can never be worse than `absmax` on any row.

Quantized sub-scales (`int6:g32s6`, llama.cpp k-quant style): the clip rule first gives each (row, group) its
scale d (fp16, as `g<N>`); then the row gets ONE fp16 scale S = max_g d / (2^k - 1), rounded UP to fp16 so the
largest group still fits, and each group the k-bit integer sub = clamp(ceil(d / S), 1, 2^k - 1): the step at
or just above what the clip rule asked, so no group is clipped harder than its rule chose. (Rounding d to the
nearest step, or picking floor/ceil by squared error, clipped the largest weights of the groups whose scale
went down, and measured worse in val_bpb: docs/quantizers.md.) The group scale the loader uses is S * sub
(exact in fp32), less than one step S above d - never a fixed floor: S follows the row's own range, so
small-range rows (absmax << 1) keep their levels. The levels are then rounded with S * sub.

GPTQ (`int6+gptq`, `int5:mse+gptq`, ...) is a rounding choice on top of any clip rule: the scales come
from the clip rule (so the grid, and roughly the compressed size, are the same as plain rounding), the
levels are then chosen column by column, each column's rounding error pushed onto the columns not yet
quantized through the input Hessian (`gptq_quantize`; Hessians from `packer/hessian.py`). Non-2-D
tensors have no columns to trade error between: they keep round-to-nearest.

Everything here is plain torch, device-agnostic and autograd-free, so the trainer's QAT can call
`fake_quantize` on GPU and get exactly what the packer will store.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from golfpack.formats.qgv3_constants import outlier_count
from golfpack.formats.records import TensorRecord, dtype_name
from golfpack.formats.spec import LQER_BITS, TensorSpec, sd_k

# The baseline's clip quantile (INT8_CLIP_PERCENTILE = 99.99984 in train_gpt.py).
BASELINE_CLIP_Q = 99.99984 / 100.0
# Clip ratios tried by the `mse` rule, largest first (1.0 == absmax, so mse <= absmax always).
MSE_CLIP_RATIOS = tuple(1.0 - 0.02 * k for k in range(45))
# Smallest positive fp16 (subnormal): floor for absmax/mse scales so a stored scale is never 0.
_FP16_TINY = 2.0**-24


def qmax_for(bits: int) -> int:
    """Largest level magnitude of a `bits`-wide grid (the format's one definition)."""
    from golfpack.formats.qgv3_constants import qmax

    return qmax(bits)


# ----------------------------------------------------------------------------------------------
# per-row (2-D) quantization


def quantize_rows(w2d: Tensor, bits: int, clip: str = "quantile", hdiag: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Quantize a 2-D tensor row by row. Returns (q int8 (rows, cols), scales fp16 (rows,)).

    hdiag: diag(H) of the layer input (cols,), the weights of the `hmse` rule (ignored by the others)."""
    if w2d.ndim != 2:
        raise ValueError(f"quantize_rows needs a 2-D tensor, got shape {tuple(w2d.shape)}")
    qmax = qmax_for(bits)
    with torch.no_grad():
        w = w2d.detach().float()
        if w.shape[1] == 0:
            return torch.zeros(w.shape, dtype=torch.int8, device=w.device), torch.ones(
                w.shape[0], dtype=torch.float16, device=w.device
            )
        if clip == "quantile":
            return _rows_quantile(w, qmax)
        s16 = row_scales(w, qmax, clip, hdiag)
        return _levels(w, s16.float()[:, None], qmax), s16.contiguous()


def row_scales(w: Tensor, qmax: int, clip: str, hdiag: Tensor | None = None) -> Tensor:
    """fp16 scale per row of `w` (float32, 2-D) under a floor-free clip rule (absmax | mse | hmse | sd<k>)."""
    if clip == "absmax":
        return _stored_scale(w.abs().amax(dim=1), qmax)
    if clip in ("mse", "hmse"):
        weight = hdiag.float().to(w.device).clamp_min(0.0) if (clip == "hmse" and hdiag is not None) else None
        return _rows_mse_scales(w, qmax, weight)
    k = sd_k(clip)
    if k is not None:
        std = torch.nan_to_num(w.std(dim=1), nan=0.0) if w.shape[1] > 1 else torch.zeros(w.shape[0], device=w.device)
        return _stored_scale(k * std, qmax)
    raise ValueError(f"unknown clip rule {clip!r}")


def _levels(w: Tensor, s: Tensor, qmax: int) -> Tensor:
    return torch.clamp(torch.round(w / s), -qmax, qmax).to(torch.int8).contiguous()


# row_quantile's top-k path serves ranks this close to a row's end (the baseline's q puts the rank in the last two).
_TOPK_MAX = 8


def row_quantile(a: Tensor, q: float) -> Tensor:
    """torch.quantile(a, q, dim=1) (linear interpolation) of a finite float32 2-D tensor, to the bit.

    torch sorts every row; a rank near the row's end needs only its top few values (topk), at a
    fraction of the cost. Same arithmetic as ATen's quantile: rank = float32(q) * (n - 1), the values
    below/above gathered, then lerp by rank - floor(rank). Anything else goes to torch.quantile."""
    rows, n = a.shape
    if n == 0 or a.dtype != torch.float32 or not bool(torch.isfinite(a.sum())):  # sum: finite iff every value is (or overflow: slow path)
        return torch.quantile(a, q, dim=1)
    rank = torch.tensor(q, dtype=torch.float32, device=a.device) * (n - 1)
    below = int(rank.floor().item())
    k = n - below
    if k > _TOPK_MAX:
        return torch.quantile(a, q, dim=1)
    top = torch.topk(a, k, dim=1, largest=True, sorted=True).values  # top[:, i] == sorted row[n - 1 - i]
    above = int(rank.ceil().item())
    lo, hi = top[:, n - 1 - below], top[:, n - 1 - above]
    return torch.lerp(lo, hi, (rank - below).expand(rows))


def _rows_quantile(w: Tensor, qmax: int) -> tuple[Tensor, Tensor]:
    # Exactly the baseline's arithmetic with 127 -> qmax (see module docstring).
    clip_abs = row_quantile(w.abs(), BASELINE_CLIP_Q)
    clipped = torch.maximum(torch.minimum(w, clip_abs[:, None]), -clip_abs[:, None])
    scale = (clip_abs / float(qmax)).clamp_min(1.0 / float(qmax))
    q = torch.clamp(torch.round(clipped / scale[:, None]), -qmax, qmax).to(torch.int8).contiguous()
    return q, scale.to(torch.float16).contiguous()


def _stored_scale(clip_abs: Tensor, qmax: int) -> Tensor:
    """fp16 scale for a clip value, never zero (an all-zero row gets the tiny floor and q = 0)."""
    return (clip_abs / float(qmax)).clamp_min(_FP16_TINY).to(torch.float16)


def _rows_mse_scales(w: Tensor, qmax: int, weight: Tensor | None) -> Tensor:
    # Per-row search over clip = absmax * r; the error is weighted by `weight` (diag H) along the columns when given.
    # Every ratio at once, rows in chunks of about _MSE_CHUNK values x ratios: each (row, ratio) error is the same
    # per-row sum as one ratio at a time, and argmin keeps the first minimum, i.e. the largest clip on ties.
    rows, cols = w.shape
    absmax = w.abs().amax(dim=1)
    s16 = torch.stack([_stored_scale(absmax * r, qmax) if k else _stored_scale(absmax, qmax)
                       for k, r in enumerate(MSE_CLIP_RATIOS)], dim=1)  # (rows, ratios), ratio 1.0 exactly absmax
    best = torch.empty(rows, dtype=torch.int64, device=w.device)
    step = max(1, _MSE_CHUNK // max(1, cols * len(MSE_CLIP_RATIOS)))
    for a in range(0, rows, step):
        b = min(rows, a + step)
        wc = w[a:b, None, :]
        s = s16[a:b].float()[:, :, None]
        e = (torch.clamp(torch.round(wc / s), -qmax, qmax) * s - wc) ** 2
        err = (e * weight[None, None, :]).sum(dim=2) if weight is not None else e.sum(dim=2)
        best[a:b] = torch.argmin(err, dim=1)
    return s16.gather(1, best[:, None])[:, 0]


_MSE_CHUNK = 1 << 22  # values x ratios per chunk of the mse search (16 MB of fp32 per temporary)


# ----------------------------------------------------------------------------------------------
# group-wise (2-D) quantization


def n_groups(cols: int, group: int) -> int:
    """Scale groups per row: ceil(cols / group) (the last group may be shorter)."""
    return -(-cols // group)


def quantize_groups(w2d: Tensor, bits: int, clip: str, group: int, hdiag: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One fp16 scale per (row, group of `group` consecutive input columns), each chosen by the clip rule on
    that group alone. Returns (q int8 (rows, cols), scales fp16 (rows, ceil(cols / group)))."""
    if w2d.ndim != 2:
        raise ValueError(f"quantize_groups needs a 2-D tensor, got shape {tuple(w2d.shape)}")
    if clip == "quantile":
        raise ValueError("the quantile clip has no group form")
    qmax = qmax_for(bits)
    with torch.no_grad():
        w = w2d.detach().float()
        rows, cols = w.shape
        ng = n_groups(cols, group)
        scales = torch.ones(rows, ng, dtype=torch.float16, device=w.device)
        for g in range(ng):
            a, b = g * group, min(cols, (g + 1) * group)
            scales[:, g] = row_scales(w[:, a:b], qmax, clip, None if hdiag is None else hdiag[a:b])
        return _levels(w, expand_group_scales(scales, group, cols), qmax), scales.contiguous()


def quantize_subscales(d: Tensor, sbits: int) -> tuple[Tensor, Tensor]:
    """(rows, groups) group scales -> (S fp16 (rows,), sub uint8 (rows, groups) in 1..2^sbits-1) with S * sub ~ d
    (module doc): S = max_g d / (2^sbits - 1) rounded up to fp16, sub = clamp(ceil(d / S), 1, 2^sbits - 1)."""
    top = (1 << sbits) - 1
    d = d.float()
    need = d.amax(dim=1) / top if d.shape[1] else torch.zeros(d.shape[0], device=d.device)
    s16 = need.to(torch.float16)
    low = s16.float() < need  # rounded down: step to the next fp16 up (positive fp16 bit patterns are ordered)
    s16 = torch.where(low, (s16.view(torch.int16) + 1).view(torch.float16), s16)
    s16 = s16.clamp_min(_FP16_TINY)
    return s16.contiguous(), ceil_subscales(d, s16, sbits)


def subscales_for(d: Tensor, s16: Tensor, sbits: int) -> Tensor:
    """The k-bit sub-scales of group scales `d` (rows, groups) on the row scales `s16` (rows,): round(d / S) in 1..2^k-1
    (exact when d is already S * sub: how GPTQ's dequantized scales give their sub-scales back)."""
    top = (1 << sbits) - 1
    return torch.clamp(torch.round(d.float() / s16.float()[:, None]), 1, top).to(torch.uint8).contiguous()


def ceil_subscales(d: Tensor, s16: Tensor, sbits: int) -> Tensor:
    """The k-bit sub-scales of group scales `d` (rows, groups) on the row scales `s16`: ceil(d / S) in 1..2^k-1 (module doc)."""
    top = (1 << sbits) - 1
    return torch.clamp(torch.ceil(d.float() / s16.float()[:, None]), 1, top).to(torch.uint8).contiguous()


def dequant_subscales(s16: Tensor, sub: Tensor) -> Tensor:
    """float32(S) * float32(sub): the (rows, groups) fp32 group scales the loader uses (TensorRecord.group_scales)."""
    return s16.float()[:, None] * sub.float()


def quantize_groups_sub(w2d: Tensor, bits: int, clip: str, group: int, sbits: int,
                        hdiag: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """`quantize_groups` with k-bit sub-scales: (q int8 (rows, cols), S fp16 (rows,), sub uint8 (rows, groups)).
    The levels are rounded with the dequantized group scales S * sub, the ones the loader uses."""
    _, d = quantize_groups(w2d, bits, clip, group, hdiag)
    s16, sub = quantize_subscales(d, sbits)
    w = w2d.detach().float()
    q = _levels(w, dequant_subscales(s16, sub).repeat_interleave(group, dim=1)[:, : w.shape[1]], qmax_for(bits))
    return q, s16, sub


def expand_group_scales(scales: Tensor, group: int, cols: int) -> Tensor:
    """(rows, ngroups) scales -> (rows, cols) fp32, each scale repeated over its group's columns."""
    return scales.float().repeat_interleave(group, dim=1)[:, :cols]


# ----------------------------------------------------------------------------------------------
# per-tensor fallback (non-2-D float tensors)


def quantize_per_tensor(t: Tensor, bits: int, clip: str = "quantile") -> tuple[Tensor, Tensor]:
    """One fp32 scale for the whole tensor, levels within +-qmax of `bits` (NOT always 127).

    Returns (q int8 flat (numel,), scale fp32 (1,)).
    """
    qmax = qmax_for(bits)
    with torch.no_grad():
        flat = t.detach().float().reshape(-1)
        if flat.numel() == 0:
            return torch.zeros(0, dtype=torch.int8, device=flat.device), torch.ones(1, dtype=torch.float32, device=flat.device)
        if clip == "quantile":
            clip_abs = float(torch.quantile(flat.abs(), BASELINE_CLIP_Q).item())
            return _flat_with_clip(flat, clip_abs, qmax)
        absmax = float(flat.abs().max().item())
        k = sd_k(clip)
        if k is not None:
            std = float(flat.std().item()) if flat.numel() > 1 else 0.0
            return _flat_with_clip(flat, k * std if std == std else 0.0, qmax)
        if clip == "absmax":
            return _flat_with_clip(flat, absmax, qmax)
        if clip in ("mse", "hmse"):  # a non-2-D tensor has no input columns: hmse is plain mse
            best = _flat_with_clip(flat, absmax, qmax)
            best_err = float(((best[0].float() * best[1] - flat) ** 2).sum())
            for r in MSE_CLIP_RATIOS[1:]:
                cand = _flat_with_clip(flat, absmax * r, qmax)
                err = float(((cand[0].float() * cand[1] - flat) ** 2).sum())
                if err < best_err:
                    best, best_err = cand, err
            return best
        raise ValueError(f"unknown clip rule {clip!r}")


def _flat_with_clip(flat: Tensor, clip_abs: float, qmax: int) -> tuple[Tensor, Tensor]:
    # The baseline's per-tensor arithmetic: fp32 scale, clamp to the clip, round, clamp to the range.
    scale = torch.tensor([clip_abs / qmax if clip_abs > 0 else 1.0], dtype=torch.float32, device=flat.device)
    q = torch.clamp(torch.round(torch.clamp(flat, -clip_abs, clip_abs) / scale), -qmax, qmax)
    return q.to(torch.int8).contiguous(), scale


# ----------------------------------------------------------------------------------------------
# GPTQ

# Damping ladder (fractions of mean diag H): GPTQ starts at `percdamp` and climbs while the Cholesky fails.
DAMP_LADDER = (0.01, 0.03, 0.1, 0.3, 1.0)


def hessian_from_activations(x: Tensor) -> Tensor:
    """H = 2/n * X^T X for calibration inputs X (..., in_features) of a linear layer (fp32)."""
    x2 = x.detach().reshape(-1, x.shape[-1]).float()
    return (2.0 / max(1, x2.shape[0])) * (x2.T @ x2)


def _damped_inverse_factor(Hm: Tensor, percdamp: float) -> tuple[Tensor, float]:
    """Upper Cholesky factor of (H + d * mean diag H * I)^-1, d the first rung of the ladder >= percdamp that works."""
    mean = torch.mean(torch.diag(Hm)).clamp_min(1e-12)
    idx = torch.arange(Hm.shape[0], device=Hm.device)
    ladder = [percdamp] + [d for d in DAMP_LADDER if d > percdamp]
    for d in ladder:
        Hd = Hm.clone()
        Hd[idx, idx] += d * mean
        L, bad = torch.linalg.cholesky_ex(Hd)
        if int(bad) == 0:
            U, bad = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
            if int(bad) == 0:
                return U, d
    raise ValueError(f"GPTQ: the Hessian is not positive definite even with damping {ladder[-1]} x mean(diag H)")


def gptq_quantize(
    w: Tensor,
    H: Tensor,
    bits: int,
    *,
    clip: str = "mse",
    block_size: int = 128,
    percdamp: float = 0.01,
    act_order: bool = True,
    group: int = 0,
    info: dict | None = None,
    sub_rows: Tensor | None = None,
    subscale: int = 0,
) -> tuple[Tensor, Tensor]:
    """Hessian-aware quantization of a (rows, cols) weight used as y = x @ w.T (Frantar et al., 2022).

    H is the (cols, cols) input second-moment matrix (see `hessian_from_activations`). Per row
    (group 0) the scales are fixed first by `clip` and stored fp16; with `group`, each (row, group)
    scale is chosen by `clip` from the error-updated weights the first time the column loop reaches a
    column of that group. The levels are chosen one column at a time, in order of decreasing diag H
    (`act_order`), each column's error pushed onto the columns not yet quantized through the Cholesky
    factor of H^-1, lazily in blocks of `block_size`. The damping starts at `percdamp` x mean(diag H) and
    climbs DAMP_LADDER while the Cholesky fails; `info["damp"]` gets the damping used. float64 throughout,
    so the levels do not hinge on the last bits of a float32 sum. Returns (q int8, scales fp16) like
    `quantize_rows` / `quantize_groups`. With `subscale` k (and `group`), `sub_rows` are the fp16 row scales S
    (fixed first, from the unupdated weights: `quantize_groups_sub`); each group's clip-rule scale is then
    quantized to S * sub the moment the loop reaches it and its columns are rounded with that dequantized
    scale; the returned scales are then fp32 S * sub (rows, groups) (`subscales_for` recovers sub).
    """
    return gptq_quantize_many(w, H, [(bits, clip)], block_size=block_size, percdamp=percdamp, act_order=act_order,
                              group=group, info=info, subscale=subscale,
                              sub_rows=None if sub_rows is None else [sub_rows])[0]


def gptq_with_outliers(w: Tensor, H: Tensor, bits: int, rate: int, **kw: Any) -> tuple[Tensor, Tensor, np.ndarray, np.ndarray]:
    """GPTQ with `+out<rate>` outliers kept inside the column loop (SpQR-style): a first GPTQ pass ranks the weights
    by |W - deq(Q(W))|; the second pass stores the outlier_count largest as the float16 of their error-updated value
    when the loop reaches them, so their (near-zero) error is what gets pushed onto the later columns. Returns
    (q, scales, sorted flat indices, float16 values); `kw` as gptq_quantize."""
    q0, s0 = gptq_quantize(w, H, bits, **kw)
    deq = _dequant_like(q0, s0, kw)
    idx, _vals = select_outliers(w, deq, rate)
    keep = torch.zeros(w.numel(), dtype=torch.bool)
    keep[torch.from_numpy(idx)] = True
    clip = kw.pop("clip", "mse")
    sub_rows = kw.pop("sub_rows", None)
    vals: list[Tensor] = []
    q, s = gptq_quantize_many(w, H, [(bits, clip)], keep=keep.view(w.shape), values_out=vals,
                              sub_rows=None if sub_rows is None else [sub_rows], **kw)[0]
    return q, s, idx, vals[0].reshape(-1)[torch.from_numpy(idx)].numpy()


def _dequant_like(q: Tensor, s: Tensor, kw: dict[str, Any]) -> Tensor:
    """fp32 q * scale for gptq's returned (q, scales): per row (rows,) fp16, or per group (rows, groups)."""
    if s.ndim == 2:
        return q.float() * expand_group_scales(s.float(), int(kw.get("group", 0)), q.shape[1])
    return q.float() * s.float().view(-1, 1)


GPTQ_STACK_VALUES = 1 << 24  # at most this many float64 weights stacked in one column loop (128 MB a copy)


def gptq_quantize_many(
    w: Tensor,
    H: Tensor,
    specs: list[tuple[int, str]],
    *,
    block_size: int = 128,
    percdamp: float = 0.01,
    act_order: bool = True,
    group: int = 0,
    info: dict | None = None,
    subscale: int = 0,
    sub_rows: list[Tensor] | None = None,
    keep: Tensor | None = None,
    values_out: list[Tensor] | None = None,
) -> list[tuple[Tensor, Tensor]]:
    """`gptq_quantize(w, H, bits, clip=clip, ...)` for every (bits, clip) of `specs`, the same levels and scales
    bit for bit, sharing the work: the damped Cholesky factor of H^-1 is computed once and the column loop runs
    on the candidates stacked as one (len(specs) * rows, cols) weight (at most GPTQ_STACK_VALUES at a time).

    Every step is elementwise per row except the lazy block update, which is one matmul per candidate on the same
    (rows, block) operands as alone; the weights are kept transposed so each column is one contiguous row.
    `subscale` k with `sub_rows` (one fp16 row-scale tensor per spec): k-bit sub-scales, as `gptq_quantize`.
    `keep` (rows, cols) bool, one spec only: those weights are stored as the fp16 of their error-updated value (the
    (rows, cols) fp16 tensor of them, zero elsewhere, is appended to `values_out`) instead of their rounded level."""
    if keep is not None and (len(specs) != 1 or values_out is None or tuple(keep.shape) != tuple(w.shape)):
        raise ValueError("keep needs one spec, a values_out list and the weight's shape")
    if subscale and (not group or sub_rows is None or len(sub_rows) != len(specs)):
        raise ValueError("subscale needs a group and one sub_rows tensor per spec")
    if w.ndim != 2:
        raise ValueError(f"gptq_quantize needs a 2-D weight, got shape {tuple(w.shape)}")
    rows, cols = w.shape
    if tuple(H.shape) != (cols, cols):
        raise ValueError(f"Hessian shape {tuple(H.shape)} does not match weight columns {cols}")
    with torch.no_grad():
        Hm = H.detach().double().to(w.device).clone()
        hdiag = torch.diag(Hm).float().clone()
        W0 = w.detach().double().clone()
        dead = torch.diag(Hm) == 0
        Hm[dead, dead] = 1.0
        W0[:, dead] = 0.0
        # act-order: a stable sort, so equal diagonals keep column order and the result is deterministic
        perm = torch.argsort(-torch.diag(Hm), stable=True) if act_order else torch.arange(cols, device=W0.device)
        inv = torch.argsort(perm)
        WT0 = W0[:, perm].T.contiguous()  # (cols, rows): column i of the permuted weight is row i
        Hm = Hm[perm][:, perm]
        Hinv, damp = _damped_inverse_factor(Hm, percdamp)
        if info is not None:
            info["damp"] = damp
        out: list[tuple[Tensor, Tensor]] = []
        per = max(1, GPTQ_STACK_VALUES // max(1, rows * cols))
        for a in range(0, len(specs), per):
            out += _gptq_stacked(w, WT0, Hinv, perm, inv, hdiag, specs[a:a + per], block_size, group, subscale,
                                 None if sub_rows is None else torch.cat(sub_rows[a:a + per]), keep, values_out)
        return out


def _gptq_stacked(w: Tensor, WT0: Tensor, Hinv: Tensor, perm: Tensor, inv: Tensor, hdiag: Tensor,
                  specs: list[tuple[int, str]], block_size: int, group: int, subscale: int = 0,
                  sub_rows: Tensor | None = None, keep: Tensor | None = None,
                  values_out: list[Tensor] | None = None) -> list[tuple[Tensor, Tensor]]:
    rows, cols = w.shape
    C = len(specs)
    R = C * rows
    qmaxes = [qmax_for(b) for b, _ in specs]
    qm = torch.tensor([float(q) for q in qmaxes for _ in range(rows)], dtype=torch.float64, device=WT0.device)
    WT = WT0.repeat(1, C)  # (cols, C * rows): candidate c owns rows c*rows .. (c+1)*rows of the stacked weight
    if group:
        ng = n_groups(cols, group)
        gscale = torch.ones(R, ng, dtype=torch.float32 if subscale else torch.float16, device=WT.device)
        have = [False] * ng
    else:
        s16s = [quantize_rows(w.detach().float(), b, c, hdiag)[1] for b, c in specs]
        s_row = torch.cat(s16s).double()
    QT = torch.zeros_like(WT)
    keepT = None if keep is None else keep.to(WT.device)[:, perm].T.contiguous()  # (cols, rows) in loop order
    VT = None if keep is None else torch.zeros(cols, R, dtype=torch.float16, device=WT.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = WT[i1:i2]  # a view: WT holds the current values of this block's columns
        E1 = torch.zeros(R, i2 - i1, dtype=WT.dtype, device=WT.device)
        Hinv1 = Hinv[i1:i2, i1:i2]
        with _one_thread():  # thousands of small elementwise ops: threads cost more than they give (4x on 2 busy cores)
            _gptq_block(W1, E1, QT, Hinv1, i1, perm, inv, WT, gscale if group else None, have if group else None,
                        s_row if not group else None, qm, qmaxes, specs, hdiag, rows, group, subscale, sub_rows,
                        keepT, VT)
        if i2 < cols:
            for k in range(C):  # one matmul per candidate: the same operands, so the same sums, as alone
                sl = slice(k * rows, (k + 1) * rows)
                WT[i2:, sl] -= (E1[sl] @ Hinv[i1:i2, i2:]).T
    Q = QT[inv].T
    if VT is not None and values_out is not None:
        values_out.append(VT[inv].T.contiguous())
    res = []
    for k in range(C):
        sl = slice(k * rows, (k + 1) * rows)
        res.append((Q[sl].to(torch.int8).contiguous(), (gscale[sl] if group else s16s[k]).contiguous()))
    return res


def _gptq_block(W1: Tensor, E1: Tensor, QT: Tensor, Hinv1: Tensor, i1: int, perm: Tensor, inv: Tensor, WT: Tensor,
                gscale: Tensor | None, have: list[bool] | None, s_row: Tensor | None, qm: Tensor, qmaxes: list[int],
                specs: list[tuple[int, str]], hdiag: Tensor, rows: int, group: int, subscale: int = 0,
                sub_rows: Tensor | None = None, keepT: Tensor | None = None, VT: Tensor | None = None) -> None:
    # One lazy block of the GPTQ column loop, in place on the stacked (transposed) weights.
    cols = WT.shape[0]
    for i in range(W1.shape[0]):
        if group:
            assert gscale is not None and have is not None
            g = int(perm[i1 + i]) // group
            if not have[g]:
                # the group's current (error-updated) values, wherever its columns sit in perm order
                cur = WT[inv[g * group:min(cols, (g + 1) * group)]].T
                for k, (q, (_, clip)) in enumerate(zip(qmaxes, specs)):
                    hd = None if clip != "hmse" else hdiag[g * group:min(cols, (g + 1) * group)]
                    sl = slice(k * rows, (k + 1) * rows)
                    gscale[sl, g] = row_scales(cur[sl].float(), q, clip, hd)
                if subscale:  # the dequantized k-bit sub-scale (the ceil step): the scale the loader will use
                    assert sub_rows is not None
                    gscale[:, g] = dequant_subscales(sub_rows, ceil_subscales(gscale[:, g:g + 1], sub_rows, subscale))[:, 0]
                have[g] = True
            s = gscale[:, g].double()
        else:
            assert s_row is not None
            s = s_row
        col = W1[i]
        d = Hinv1[i, i]
        qc = torch.clamp(torch.round(col / s), -qm, qm)
        QT[i1 + i] = qc
        deq = qc * s
        if keepT is not None and VT is not None and bool(keepT[i1 + i].any()):  # kept: its fp16, ~no error to push
            m = keepT[i1 + i]
            VT[i1 + i, m] = col[m].to(torch.float16)
            deq = torch.where(m, VT[i1 + i].double(), deq)
        err = (col - deq) / d
        W1[i:] -= Hinv1[i, i:][:, None] * err[None, :]
        E1[:, i] = err


class _one_thread:
    """torch on one intra-op thread inside the block (restored after)."""

    def __enter__(self) -> None:
        self.n = torch.get_num_threads()
        if self.n != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc: object) -> None:
        if self.n != 1:
            torch.set_num_threads(self.n)


# ----------------------------------------------------------------------------------------------
# the scale floor: when the seed-exact `quantile` rule swallows a tensor's range

# A row is "swallowed" when its clip is below this fraction of the floor's clip (1.0): it then uses at
# most this fraction of the levels, and most of its weights round to zero at low widths.
FLOOR_SWALLOW_FRACTION = 0.5


def floor_warning(name: str, t: Tensor, spec: TensorSpec) -> str | None:
    """A warning line when `spec`'s scale floor (only `quantile` has one: scale >= 1/qmax) swallows most of
    the rows of the 2-D tensor `t`, naming the tensor, the rows and what to use instead; else None."""
    if spec.kind != "int" or spec.clip != "quantile" or t.ndim != 2 or t.shape[1] == 0 or not t.is_floating_point():
        return None
    with torch.no_grad():
        clip_abs = row_quantile(t.detach().float().abs(), BASELINE_CLIP_Q)
    low = torch.nonzero(clip_abs < FLOOR_SWALLOW_FRACTION).reshape(-1).tolist()
    if 2 * len(low) <= t.shape[0]:
        return None
    rows = ", ".join(map(str, low[:6])) + (", ..." if len(low) > 6 else "")
    used = max(1, round(float(clip_abs.max()) * spec.qmax))
    return (f"{name}: {spec.label()} floors the scale at 1/{spec.qmax}, which swallows {len(low)} of {t.shape[0]} rows "
            f"(rows {rows}; row range {float(clip_abs.min()):.3g}..{float(clip_abs.max()):.3g}, at most {used} of "
            f"{spec.qmax} levels used): most weights round to zero; use a floor-free spec such as int{spec.bits}:sd12, "
            f"int{spec.bits}:mse or int{spec.bits}:g64")


def floor_warnings(state_dict: dict[str, Tensor], specs: dict[str, TensorSpec]) -> list[str]:
    """`floor_warning` for every tensor of a pack, in state-dict order (what `pack` reports and prints)."""
    out = []
    for name, t in state_dict.items():
        w = floor_warning(name, t, specs[name])
        if w is not None:
            out.append(w)
    return out


# ----------------------------------------------------------------------------------------------
# LQER: a low-rank correction of the quantization error (Zhang et al., 2024)


def lqer_factors(err: Tensor, rank: int, bits: int = LQER_BITS, hessian: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Quantized rank-`rank` factors of the error `err` (rows, cols): E ~ A @ B with A = U_r S_r^1/2, B = S_r^1/2 V_r^T.

    Returns (levels int8, flat r (rows + cols): A^T (r, rows) then B (r, cols); scales fp16 (2r,), one absmax scale
    per row of A^T, then per row of B) - the layout `lqer_apply` and docs/qgv3.md 8b read. B is quantized first,
    then A is refitted by least squares to the quantized B and quantized: the refit takes back part of B's
    rounding error, never adds any (before A's own rounding). float64 throughout.

    hessian: the layer input's (cols, cols) H. Given, the factors minimise the OUTPUT error tr((E - AB) H (E - AB)^T)
    instead of ||E - AB||_F (activation-aware, as L2QER): the SVD is of E L with H + 1% mean(diag H) I = L L^T, and
    B = S_r^1/2 V_r^T L^-1. Measured on nolanvild's GPTQ int3/int4 residuals (rank 4, int8, bench/lqer_factor_bits.py):
    0.67x / 0.66x the calibration output error without LQER, against 0.72x / 0.71x for the plain SVD - yet the fresh-load
    gap on val was worse (bench/quant_gap.py gptq int3 + lqer4: +0.0143 against +0.0132), so `quantize_tensor` (what
    `+lqer<r>` stores) uses the plain fit; this one is for experiments."""
    if err.ndim != 2 or not (1 <= rank <= min(err.shape)):
        raise ValueError(f"LQER needs a 2-D error and 1 <= rank <= min(rows, cols), got shape {tuple(err.shape)} rank {rank}")
    with torch.no_grad():
        e = err.detach().double().cpu()
        chol = None if hessian is None else _lqer_weight(hessian.detach().double().cpu())
        if chol is None:
            at0, b = lqer_svd(e, rank)
        else:
            at0, bw = lqer_svd(e @ chol, rank)
            b = torch.linalg.solve_triangular(chol.T, bw.T, upper=True).T  # B L = B_w
        qb, sb = quantize_rows(b.float(), bits, "absmax")
        bq = qb.double() * sb.double()[:, None]
        m, rhs = (bq.T, e.T) if chol is None else (chol.T @ bq.T, chol.T @ e.T)
        # least squares refit of A to the quantized B (in the metric of H when given); lstsq copes with a B row rounded to 0
        at = torch.linalg.lstsq(m, rhs, driver="gelsd").solution if bool(bq.abs().sum() > 0) else at0
        qa, sa = quantize_rows(at.float(), bits, "absmax")
        return torch.cat([qa.reshape(-1), qb.reshape(-1)]).contiguous(), torch.cat([sa, sb]).contiguous()


def _lqer_weight(h: Tensor) -> Tensor | None:
    """Lower Cholesky factor of H + d mean(diag H) I, d climbing DAMP_LADDER from 0.01 (None: H has no signal)."""
    mean = float(torch.diag(h).mean())
    if not mean > 0:
        return None
    eye = torch.eye(h.shape[0], dtype=h.dtype)
    for d in DAMP_LADDER:
        chol, bad = torch.linalg.cholesky_ex(h + d * mean * eye)
        if int(bad) == 0:
            return chol
    return None


def lqer_svd(err: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """The unquantized factors (A^T (r, rows), B (r, cols)), float64: A = U_r S_r^1/2, B = S_r^1/2 V_r^T."""
    u, sv, vh = torch.linalg.svd(err.detach().double().cpu(), full_matrices=False)
    root = sv[:rank].sqrt()
    return (u[:, :rank] * root).T.contiguous(), (root[:, None] * vh[:rank]).contiguous()


def lqer_error_bound(err: Tensor, rank: int) -> float:
    """Eckart-Young: the least ||E - A B||_F^2 any rank-`rank` factors reach, sum_{i > rank} sigma_i^2 (float64)."""
    sv = torch.linalg.svdvals(err.detach().double().cpu())
    return float((sv[rank:] ** 2).sum())


# ----------------------------------------------------------------------------------------------
# tensor -> record


def _levels_and_scales(t: Tensor, spec: TensorSpec, hessian: Tensor | None, info: dict | None = None,
                       kept: list | None = None) -> tuple[Tensor, Tensor, Tensor | None]:
    """(levels, scales, sub-scales or None): sub-scales only for a 2-D tensor whose spec has `s<k>`. With `kept` (a
    list) and a `+gptq+out<k>` spec, the outliers are kept inside the GPTQ loop and appended as [indices, values]."""
    if not t.is_floating_point():
        raise ValueError(f"cannot integer-quantize a {dtype_name(t.dtype)} tensor; use 'exact' passthrough")
    if t.ndim == 2:
        hdiag = torch.diag(hessian.detach().float()) if (spec.clip == "hmse" and hessian is not None) else None
        if spec.gptq:
            if hessian is None:
                raise ValueError(f"{spec.label()} needs a Hessian from calibration tokens (pack with calib='TRAIN_SHARDS'); none was given")
            kw: dict[str, Any] = {"clip": spec.clip, "group": spec.group, "info": info}
            s16 = None
            if spec.subscale:
                s16 = quantize_groups_sub(t, spec.bits, spec.clip, spec.group, spec.subscale, hdiag)[1]
                kw.update(sub_rows=s16, subscale=spec.subscale)
            if spec.outliers and kept is not None:
                q, gs, idx, vals = gptq_with_outliers(t, hessian, spec.bits, spec.outliers, **kw)
                kept += [idx, vals]
            else:
                q, gs = gptq_quantize(t, hessian, spec.bits, **kw)
            return (q, s16, subscales_for(gs, s16, spec.subscale)) if s16 is not None else (q, gs, None)
        if spec.subscale:
            return quantize_groups_sub(t, spec.bits, spec.clip, spec.group, spec.subscale, hdiag)
        if spec.group:
            return (*quantize_groups(t, spec.bits, spec.clip, spec.group, hdiag), None)
        return (*quantize_rows(t, spec.bits, spec.clip, hdiag), None)
    return (*quantize_per_tensor(t, spec.bits, spec.clip), None)  # no rows: one scale, whatever the group


def _passthrough_values(t: Tensor, dtype: str) -> Tensor:
    if dtype == "exact":
        return t
    return t.to({"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype])


def quantize_tensor(name: str, t: Tensor, spec: TensorSpec, hessian: Tensor | None = None, info: dict | None = None) -> TensorRecord:
    """Store one tensor as `spec` says. Integer tensors must use `exact` (anything else is an error).

    hessian: the layer input's (cols, cols) Hessian, for `+gptq` and `hmse`; info: filled with
    {"damp": ...} when GPTQ ran (the damping it needed, see gptq_quantize)."""
    t = t.detach().cpu().contiguous()
    orig = dtype_name(t.dtype)
    shape = tuple(int(d) for d in t.shape)
    if spec.kind == "int":
        kept: list = []
        q, s, sub = _levels_and_scales(t, spec, hessian, info, kept)
        base = TensorRecord(name=name, shape=shape, orig_dtype=orig, spec=replace(spec, lqer=0, outliers=0), q=q.cpu().numpy(),
                            scales=s.cpu().numpy(), subscales=None if sub is None else sub.cpu().numpy())
        if spec.outliers:  # GPTQ: kept inside its loop (gptq_with_outliers); else after rounding, as fp16 of W
            idx, vals = kept if kept else select_outliers(t, replace(base, orig_dtype="float32").dequantize(), spec.outliers)
            return replace(base, spec=spec, outlier_idx=idx, outlier_vals=vals)
        return _with_lqer(base, t, spec)
    if not t.is_floating_point() and spec.dtype != "exact":
        raise ValueError(f"{name}: {orig} tensor can only be stored 'exact', not {spec.dtype}")
    v = _passthrough_values(t, spec.dtype).contiguous()
    if v.dtype == torch.bfloat16:  # numpy has no bf16: keep the raw bits
        data = v.view(torch.int16).numpy().view(np.uint16)
    else:
        data = v.numpy()
    return TensorRecord(name=name, shape=shape, orig_dtype=orig, spec=spec, data=data.copy())


def _with_lqer(base: TensorRecord, t: Tensor, spec: TensorSpec) -> TensorRecord:
    """`base` (the tensor quantized as `spec` without +lqer) with the spec's LQER correction fitted on top; a vector
    or an empty matrix has no low-rank error to correct and is stored without it."""
    if not spec.lqer or t.ndim != 2 or min(base.shape) == 0:
        return base
    spec = replace(spec, lqer=min(spec.lqer, *base.shape))  # no more components than the matrix has
    # E = W - dequant(Q(W)), in fp32 before the cast. The plain SVD fit, Hessian or not: the activation-aware
    # fit cut the calibration output error more but lost fresh-load bpb on nolanvild (docs/policies.md, "LQER")
    e = t.float() - replace(base, orig_dtype="float32").dequantize()
    fq, fs = lqer_factors(e, spec.lqer)
    return replace(base, spec=spec, lqer_q=fq.numpy(), lqer_scales=fs.numpy(), lqer_bits=LQER_BITS)


def quantize_candidates(name: str, t: Tensor, specs: list[TensorSpec], hessian: Tensor | None = None) -> list[TensorRecord]:
    """`[quantize_tensor(name, t, s, hessian) for s in specs]`, the same records, with the +gptq specs of a matrix
    run together (`gptq_quantize_many`, one batch per scale group): one Cholesky, one column loop."""
    out: dict[int, TensorRecord] = {}
    tc = t.detach().cpu().contiguous()
    batched: dict[int, list[int]] = {}
    if tc.ndim == 2 and tc.is_floating_point() and hessian is not None:
        for j, s in enumerate(specs):
            if s.kind == "int" and s.gptq and not s.subscale and not s.outliers:  # those go one at a time (quantize_tensor)
                batched.setdefault(s.group, []).append(j)
    for group, js in batched.items():
        res = gptq_quantize_many(tc, hessian, [(specs[j].bits, specs[j].clip) for j in js], group=group)
        for j, (q, sc) in zip(js, res):
            out[j] = _with_lqer(TensorRecord(name=name, shape=tuple(int(d) for d in tc.shape), orig_dtype=dtype_name(tc.dtype),
                                             spec=replace(specs[j], lqer=0), q=q.cpu().numpy(), scales=sc.cpu().numpy()),
                                tc, specs[j])
    for j, s in enumerate(specs):
        if j not in out:
            out[j] = quantize_tensor(name, tc, s, hessian if s.needs_hessian else None)
    return [out[j] for j in range(len(specs))]


def select_outliers(w: Tensor, deq: Tensor, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """The `+out<rate>` outliers of `w` given its dequantized grid values `deq` (fp32, before the cast): the
    outlier_count(numel, rate) flat indices with the largest |w - deq| (ties: the lower index; returned sorted) and the
    float16 of w there."""
    flat = w.detach().reshape(-1).cpu()
    err = (flat.double() - deq.detach().reshape(-1).cpu().double()).abs().numpy()
    n = outlier_count(err.size, rate)
    idx = np.sort(np.argsort(-err, kind="stable")[:n]).astype(np.int64)
    return idx, flat[torch.from_numpy(idx)].to(torch.float16).numpy()


def fake_quantize(w: Tensor, spec: TensorSpec, hessian: Tensor | None = None) -> Tensor:
    """The values `pack` would store for `w` under `spec`, same dtype/device as `w`, no autograd.

    Uses the same arithmetic as TensorRecord.dequantize (q.float() * scale.float() -> dtype), so a
    QAT forward sees exactly the weights the loader will rebuild.
    """
    with torch.no_grad():
        if spec.kind == "passthrough":
            return _passthrough_values(w.detach(), spec.dtype).to(w.dtype)
        if (spec.lqer and w.ndim == 2) or spec.outliers:  # the correction / outliers are fitted on the CPU, as the packer does
            return quantize_tensor("w", w, spec, hessian).dequantize().to(w.device)
        q, s, sub = _levels_and_scales(w.detach(), spec, hessian)
        if sub is not None:
            out = q.float() * dequant_subscales(s, sub).repeat_interleave(spec.group, dim=1)[:, : w.shape[1]]
        elif w.ndim == 2 and s.ndim == 2:
            out = q.float() * expand_group_scales(s, spec.group, w.shape[1])
        elif w.ndim == 2:
            out = q.float() * s.float().view(-1, 1)
        else:
            out = q.float() * float(s.reshape(-1)[0])
        return out.to(w.dtype).reshape(w.shape)


__all__ = [
    "BASELINE_CLIP_Q",
    "DAMP_LADDER",
    "FLOOR_SWALLOW_FRACTION",
    "dequant_subscales",
    "expand_group_scales",
    "floor_warning",
    "floor_warnings",
    "n_groups",
    "quantize_groups",
    "quantize_groups_sub",
    "ceil_subscales",
    "quantize_subscales",
    "subscales_for",
    "row_scales",
    "MSE_CLIP_RATIOS",
    "fake_quantize",
    "gptq_quantize",
    "gptq_quantize_many",
    "GPTQ_STACK_VALUES",
    "gptq_with_outliers",
    "hessian_from_activations",
    "lqer_error_bound",
    "lqer_factors",
    "lqer_svd",
    "qmax_for",
    "quantize_per_tensor",
    "quantize_rows",
    "quantize_candidates",
    "quantize_tensor",
    "select_outliers",
]
