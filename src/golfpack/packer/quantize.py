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

GPTQ (`int6+gptq`, `int5:mse+gptq`, ...) is a rounding choice on top of any clip rule: the scales come
from the clip rule (so the grid, and roughly the compressed size, are the same as plain rounding), the
levels are then chosen column by column, each column's rounding error pushed onto the columns not yet
quantized through the input Hessian (`gptq_quantize`; Hessians from `packer/hessian.py`). Non-2-D
tensors have no columns to trade error between: they keep round-to-nearest.

Everything here is plain torch, device-agnostic and autograd-free, so the trainer's QAT can call
`fake_quantize` on GPU and get exactly what the packer will store.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from golfpack.formats.records import TensorRecord, dtype_name
from golfpack.formats.spec import TensorSpec

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


def quantize_rows(w2d: Tensor, bits: int, clip: str = "quantile") -> tuple[Tensor, Tensor]:
    """Quantize a 2-D tensor row by row. Returns (q int8 (rows, cols), scales fp16 (rows,))."""
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
        if clip == "absmax":
            return _rows_with_clip(w, w.abs().amax(dim=1), qmax)
        if clip == "mse":
            return _rows_mse(w, qmax)
        raise ValueError(f"unknown clip rule {clip!r}")


def _rows_quantile(w: Tensor, qmax: int) -> tuple[Tensor, Tensor]:
    # Exactly the baseline's arithmetic with 127 -> qmax (see module docstring).
    clip_abs = torch.quantile(w.abs(), BASELINE_CLIP_Q, dim=1)
    clipped = torch.maximum(torch.minimum(w, clip_abs[:, None]), -clip_abs[:, None])
    scale = (clip_abs / float(qmax)).clamp_min(1.0 / float(qmax))
    q = torch.clamp(torch.round(clipped / scale[:, None]), -qmax, qmax).to(torch.int8).contiguous()
    return q, scale.to(torch.float16).contiguous()


def _stored_scale(clip_abs: Tensor, qmax: int) -> Tensor:
    """fp16 scale for a clip value, never zero (an all-zero row gets the tiny floor and q = 0)."""
    return (clip_abs / float(qmax)).clamp_min(_FP16_TINY).to(torch.float16)


def _rows_with_clip(w: Tensor, clip_abs: Tensor, qmax: int) -> tuple[Tensor, Tensor]:
    s16 = _stored_scale(clip_abs, qmax)
    s = s16.float()[:, None]
    q = torch.clamp(torch.round(w / s), -qmax, qmax).to(torch.int8).contiguous()
    return q, s16.contiguous()


def _rows_mse(w: Tensor, qmax: int) -> tuple[Tensor, Tensor]:
    absmax = w.abs().amax(dim=1)
    best_q, best_s = _rows_with_clip(w, absmax, qmax)
    best_err = ((best_q.float() * best_s.float()[:, None] - w) ** 2).sum(dim=1)
    for r in MSE_CLIP_RATIOS[1:]:
        q, s16 = _rows_with_clip(w, absmax * r, qmax)
        err = ((q.float() * s16.float()[:, None] - w) ** 2).sum(dim=1)
        better = err < best_err  # strict: ties keep the larger clip
        if bool(better.any()):
            best_q[better] = q[better]
            best_s[better] = s16[better]
            best_err = torch.where(better, err, best_err)
    return best_q, best_s


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
        if clip == "absmax":
            return _flat_with_clip(flat, absmax, qmax)
        if clip == "mse":
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


def hessian_from_activations(x: Tensor) -> Tensor:
    """H = 2/n * X^T X for calibration inputs X (..., in_features) of a linear layer (fp32)."""
    x2 = x.detach().reshape(-1, x.shape[-1]).float()
    return (2.0 / max(1, x2.shape[0])) * (x2.T @ x2)


def gptq_quantize(
    w: Tensor,
    H: Tensor,
    bits: int,
    *,
    clip: str = "mse",
    block_size: int = 128,
    percdamp: float = 0.01,
) -> tuple[Tensor, Tensor]:
    """Hessian-aware per-row quantization of a (rows, cols) weight used as y = x @ w.T.

    H is the (cols, cols) input second-moment matrix (see `hessian_from_activations`). Scales are
    fixed first by `clip` (absmax | mse | quantile) and stored fp16; the levels are then chosen one
    column at a time, each column's error being compensated on later columns via the Cholesky factor
    of H^-1 (Frantar et al., 2022). Returns (q int8, scales fp16) like `quantize_rows`.
    The arithmetic is float64, so the levels do not hinge on the last bits of a float32 sum.
    """
    if w.ndim != 2:
        raise ValueError(f"gptq_quantize needs a 2-D weight, got shape {tuple(w.shape)}")
    rows, cols = w.shape
    if tuple(H.shape) != (cols, cols):
        raise ValueError(f"Hessian shape {tuple(H.shape)} does not match weight columns {cols}")
    qmax = qmax_for(bits)
    with torch.no_grad():
        _, s16 = quantize_rows(w.detach().float(), bits, clip)
        W = w.detach().double().clone()
        s = s16.double()
        Hm = H.detach().double().to(W.device).clone()
        dead = torch.diag(Hm) == 0
        Hm[dead, dead] = 1.0
        W[:, dead] = 0.0
        damp = percdamp * torch.mean(torch.diag(Hm))
        idx = torch.arange(cols, device=W.device)
        Hm[idx, idx] += damp
        L = torch.linalg.cholesky(Hm)
        Hinv = torch.cholesky_inverse(L)
        Hinv = torch.linalg.cholesky(Hinv, upper=True)
        Q = torch.zeros_like(W)
        for i1 in range(0, cols, block_size):
            i2 = min(i1 + block_size, cols)
            W1 = W[:, i1:i2].clone()
            Q1 = torch.zeros_like(W1)
            E1 = torch.zeros_like(W1)
            Hinv1 = Hinv[i1:i2, i1:i2]
            for i in range(i2 - i1):
                col = W1[:, i]
                d = Hinv1[i, i]
                qc = torch.clamp(torch.round(col / s), -qmax, qmax)
                Q1[:, i] = qc
                err = (col - qc * s) / d
                W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
                E1[:, i] = err
            Q[:, i1:i2] = Q1
            W[:, i2:] -= E1 @ Hinv[i1:i2, i2:]
        return Q.to(torch.int8).contiguous(), s16.contiguous()


# ----------------------------------------------------------------------------------------------
# tensor -> record


def _levels_and_scales(t: Tensor, spec: TensorSpec, hessian: Tensor | None) -> tuple[Tensor, Tensor]:
    if not t.is_floating_point():
        raise ValueError(f"cannot integer-quantize a {dtype_name(t.dtype)} tensor; use 'exact' passthrough")
    if t.ndim == 2:
        if spec.gptq:
            if hessian is None:
                raise ValueError(f"{spec.label()} needs a Hessian from calibration tokens (pack with calib='TRAIN_SHARDS'); none was given")
            return gptq_quantize(t, hessian, spec.bits, clip=spec.clip)
        return quantize_rows(t, spec.bits, spec.clip)
    return quantize_per_tensor(t, spec.bits, spec.clip)


def _passthrough_values(t: Tensor, dtype: str) -> Tensor:
    if dtype == "exact":
        return t
    return t.to({"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[dtype])


def quantize_tensor(name: str, t: Tensor, spec: TensorSpec, hessian: Tensor | None = None) -> TensorRecord:
    """Store one tensor as `spec` says. Integer tensors must use `exact` (anything else is an error)."""
    t = t.detach().cpu().contiguous()
    orig = dtype_name(t.dtype)
    shape = tuple(int(d) for d in t.shape)
    if spec.kind == "int":
        q, s = _levels_and_scales(t, spec, hessian)
        return TensorRecord(name=name, shape=shape, orig_dtype=orig, spec=spec, q=q.cpu().numpy(), scales=s.cpu().numpy())
    if not t.is_floating_point() and spec.dtype != "exact":
        raise ValueError(f"{name}: {orig} tensor can only be stored 'exact', not {spec.dtype}")
    v = _passthrough_values(t, spec.dtype).contiguous()
    if v.dtype == torch.bfloat16:  # numpy has no bf16: keep the raw bits
        data = v.view(torch.int16).numpy().view(np.uint16)
    else:
        data = v.numpy()
    return TensorRecord(name=name, shape=shape, orig_dtype=orig, spec=spec, data=data.copy())


def fake_quantize(w: Tensor, spec: TensorSpec, hessian: Tensor | None = None) -> Tensor:
    """The values `pack` would store for `w` under `spec`, same dtype/device as `w`, no autograd.

    Uses the same arithmetic as TensorRecord.dequantize (q.float() * scale.float() -> dtype), so a
    QAT forward sees exactly the weights the loader will rebuild.
    """
    with torch.no_grad():
        if spec.kind == "passthrough":
            return _passthrough_values(w.detach(), spec.dtype).to(w.dtype)
        q, s = _levels_and_scales(w.detach(), spec, hessian)
        if w.ndim == 2:
            out = q.float() * s.float().view(-1, 1)
        else:
            out = q.float() * float(s.reshape(-1)[0])
        return out.to(w.dtype).reshape(w.shape)


__all__ = [
    "BASELINE_CLIP_Q",
    "MSE_CLIP_RATIOS",
    "fake_quantize",
    "gptq_quantize",
    "hessian_from_activations",
    "qmax_for",
    "quantize_per_tensor",
    "quantize_rows",
    "quantize_tensor",
]
