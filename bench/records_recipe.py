"""A self-contained (numpy/torch only) implementation of the Parameter Golf records' post-training
quantization recipe, written for the bench from our reading of how the records describe it (no code
copied). Used by bench/quant_gap_proto.py as the reference the golfpack quantizers must beat.

What it does, exactly:
  * Hessians: H = (1/N) sum_x x x^T of the INPUT of every nn.Linear of golfpack's GPT (forward hooks;
    CastedLinear is an nn.Linear), and for a tied embedding the Hessian of the LM-head input, i.e. of
    the final-norm OUTPUT (hook on `final_norm`), keyed "tok_emb.weight". N = number of token rows.
  * Block matrices (attn c_q/c_k/c_v/proj, mlp fc/proj): int6, symmetric levels in [-31, 31],
    one fp16 scale per output row, SDClip: scale = k * std(row) / qmax with k = 13 for attention and
    k = 12 for MLP; levels chosen by full GPTQ (act-order = columns sorted by diag(H) descending,
    damping 0.01 * mean(diag H) added to the diagonal (raised 0.01 -> 0.03 -> 0.1 -> 0.3 -> 1 if the
    Cholesky fails), block size 128, lazy batch updates with the upper Cholesky factor of H^-1).
    Dead inputs (diag H == 0) get H_ii = 1 and their weights are zeroed-then-quantized like GPTQ does.
  * Embedding: int8 (qmax 127) with k = 20 (or int7, qmax 63, k = 15), GPTQ'd through the LM-head
    input Hessian when tied (round-to-nearest with the SDClip scale when no Hessian is given).
  * Everything else (1-D gains, resid_mix, skip_weights, q_gain, ...) passes through as fp16.
  * LQER: for the 3 tensors with the largest Hessian-weighted error tr(E H E^T) (E = W - Q(W); plain
    Frobenius norm where there is no Hessian), a rank-4 correction A B of E, golfpack's own LQER
    (packer/quantize.py lqer_factors: truncated SVD, A = U_r S_r^1/2, B = S_r^1/2 V_r^T, int8 with one
    fp16 scale per component, A refitted to the quantized B; added at load by formats/records.lqer_apply),
    or (lqer_factor_dtype="fp16") A = U_r S_r, B = V_r^T stored fp16.
  * Bytes: per tensor, the stored streams (int8 containers of the levels as the records ship them,
    fp16 scales, fp16 passthrough, LQER factors) serialized raw and compressed with lzma (preset 9e)
    and brotli (q11, when the module is installed); both per tensor and for the whole concatenated
    blob (the whole-blob numbers are what an artifact would cost, minus container headers).

Sources read to learn it (not copied): openai/parameter-golf records that describe "GPTQ SDClip"
(PR #1394 lineage: SDClip k ~12.85 matrices / 20 embed, int6 matrices + int8 embed, brotli-11),
a fork's `apply_gptq_sdclip_inplace`/`collect_hessians` (act-order by diag H, damping ladder from
0.01, block 128, final-norm hook for the tied head, self-generated calibration), and the record PR
#1935 discussion of LQER (baseline "top3 r4": rank 4 on the 3 worst tensors).
"""

from __future__ import annotations

import lzma
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from golfpack.formats.records import lqer_apply
from golfpack.packer.quantize import lqer_factors

try:  # optional
    import brotli  # type: ignore
except Exception:  # pragma: no cover
    brotli = None

ATTN_K, MLP_K = 13.0, 12.0
EMB_BITS, EMB_K = 8, 20.0  # alternative: (7, 15.0)
BLOCK_BITS = 6
DAMP, BLOCK = 0.01, 128
LQER_RANK, LQER_TOP = 4, 3


# ------------------------------------------------------------------------------------------------
# Hessians


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[Tensor], *, tied_head: bool | None = None) -> dict[str, Tensor]:
    """H[name.weight] = mean over token rows of x x^T for every nn.Linear's input; plus
    H['tok_emb.weight'] from the final-norm output when the head is tied. `batches`: (B, T) int tensors."""
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []

    def add(key: str, x: Tensor) -> None:
        x = x.detach().float().reshape(-1, x.shape[-1])
        if key not in sums:
            sums[key] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64)
            counts[key] = 0
        sums[key] += (x.T @ x).double()
        counts[key] += x.shape[0]

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            key = f"{name}.weight"
            hooks.append(mod.register_forward_hook(lambda m, inp, out, key=key: add(key, inp[0])))
    if tied_head is None:
        tied_head = getattr(model, "lm_head", None) is None
    if tied_head and hasattr(model, "final_norm"):
        hooks.append(model.final_norm.register_forward_hook(lambda m, inp, out: add("tok_emb.weight", out)))
    was = model.training
    model.eval()
    try:
        for x in batches:
            model.logits(x) if hasattr(model, "logits") else model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return {k: (sums[k] / max(counts[k], 1)).float() for k in sums}


# ------------------------------------------------------------------------------------------------
# quantizers


def sdclip_scale(w: Tensor, k: float, qmax: int) -> Tensor:
    """k * std(row) / qmax, rounded to fp16 (the stored dtype). A row whose fp16 scale is 0 (an all-zero
    row: SamTruss's int8 artifact has hundreds in its zero-initialised output projections) gets scale 1.0,
    so its levels are 0 instead of 0/0 = NaN."""
    s = (k * w.float().std(dim=1) / qmax).half().float()
    return torch.where(s > 0, s, torch.ones_like(s))


def rtn(w: Tensor, scale: Tensor, qmax: int) -> Tensor:
    return torch.clamp(torch.round(w.float() / scale[:, None]), -qmax, qmax)


def gptq(w: Tensor, H: Tensor, scale: Tensor, qmax: int, *, block: int = BLOCK, damp: float = DAMP,
         act_order: bool = True, group: int | None = None, group_scale_fn=None) -> tuple[Tensor, Tensor, float]:
    """Full GPTQ. Returns (levels (rows, cols) float, scales, damping used).

    With `group`, scales are per (row, group of `group` input columns) in the ORIGINAL column order and
    are computed by `group_scale_fn(W_block_cols)` from the error-updated weights the first time the loop
    reaches any column of that group (act-order compatible: the group of a column is its original index
    // group; `scale` is then ignored and the returned scales have shape (rows, cols // group))."""
    W = w.float().clone()
    rows, cols = W.shape
    H = H.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols)
    inv = torch.argsort(perm)
    W = W[:, perm]
    H = H[perm][:, perm]
    used = damp
    for d in (damp, 0.03, 0.1, 0.3, 1.0):
        if d < damp:
            continue
        try:
            Hd = H.clone()
            Hd.diagonal().add_(d * torch.mean(torch.diag(H)).clamp_min(1e-8))
            L = torch.linalg.cholesky(Hd.double())
            Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True).float()
            used = d
            break
        except RuntimeError:
            if d >= 1.0:
                raise
    Q = torch.zeros_like(W)
    if group is not None:
        ng = cols // group
        gscale = torch.zeros(rows, ng)
        have = torch.zeros(ng, dtype=torch.bool)
        grp_of = perm // group  # group of each permuted column
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        Err = torch.zeros_like(W1)
        Hi = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            wcol = W1[:, i]
            if group is not None:
                g = int(grp_of[c])
                if not have[g]:
                    # current (error-updated) values of this group's columns, wherever they sit in perm order
                    members = inv[g * group:(g + 1) * group]
                    cur = torch.empty(rows, group)
                    for j, m in enumerate(members.tolist()):
                        cur[:, j] = W1[:, m - i1] if i1 <= m < i2 else W[:, m]
                    gscale[:, g] = group_scale_fn(cur)
                    have[g] = True
                s = gscale[:, g]
            else:
                s = scale
            q = torch.clamp(torch.round(wcol / s), -qmax, qmax)
            Q[:, c] = q
            e = (wcol - q * s) / Hi[i, i]
            W1[:, i:] -= e[:, None] * Hi[i, i:][None, :]
            Err[:, i] = e
        W[:, i2:] -= Err @ Hinv[i1:i2, i2:]
        # keep W's current block updated so later group scale lookups see final values
        W[:, i1:i2] = W1
    Q = Q[:, inv]
    if group is not None:
        return Q, gscale, used
    return Q, scale, used


def quantize_int8_rows(x: Tensor) -> tuple[Tensor, Tensor]:
    s = (x.abs().amax(dim=1) / 127).clamp_min(1e-12)
    return torch.clamp(torch.round(x / s[:, None]), -127, 127), s


# ------------------------------------------------------------------------------------------------
# byte accounting


def compress_sizes(data: bytes) -> dict[str, int]:
    out = {"raw": len(data), "lzma": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))}
    if brotli is not None:
        out["brotli"] = len(brotli.compress(data, quality=11))
    return out


@dataclass
class TensorBytes:
    name: str
    kind: str  # "int6" | "int8" | "fp16" | ...
    streams: list[bytes] = field(default_factory=list)

    def blob(self) -> bytes:
        return b"".join(self.streams)


def tensor_class(name: str) -> str:
    if name == "tok_emb.weight" or name == "lm_head.weight":
        return "embed"
    if ".attn." in name:
        return "attn"
    if ".mlp." in name:
        return "mlp"
    return "other"


@torch.no_grad()
def quantize_records_recipe(
    state_dict: dict[str, Tensor],
    hessians: dict[str, Tensor] | None,
    *,
    emb_bits: int = EMB_BITS,
    emb_k: float = EMB_K,
    lqer: bool = True,
    lqer_rank: int = LQER_RANK,
    lqer_top: int = LQER_TOP,
    lqer_factor_dtype: str = "int8",
) -> tuple[dict[str, Tensor], dict]:
    """-> (dequantized state dict in each tensor's original dtype, bytes report)."""
    hessians = hessians or {}
    deq: dict[str, Tensor] = {}
    tb: dict[str, TensorBytes] = {}
    info: dict[str, dict] = {}
    errs: dict[str, float] = {}
    for name, t in state_dict.items():
        cls = tensor_class(name)
        if t.ndim == 2 and cls in ("attn", "mlp", "embed") and t.is_floating_point():
            if cls == "embed":
                bits, k = emb_bits, emb_k
            else:
                bits, k = BLOCK_BITS, (ATTN_K if cls == "attn" else MLP_K)
            qmax = 2 ** (bits - 1) - 1
            w = t.float()
            s = sdclip_scale(w, k, qmax)  # already fp16-rounded: quantize with the scales that are stored
            H = hessians.get(name)
            if H is not None:
                q, s, damp = gptq(w, H, s, qmax)
            else:
                q, damp = rtn(w, s, qmax), None
            wq = q * s[:, None]
            deq[name] = wq
            E = w - wq
            errs[name] = float(torch.einsum("ij,jk,ik->", E, H.float(), E)) if H is not None else float((E * E).sum())
            tb[name] = TensorBytes(name, f"int{bits}", [q.to(torch.int8).numpy().tobytes(), s.half().numpy().tobytes()])
            info[name] = {"class": cls, "bits": bits, "k": k, "gptq": H is not None, "damp": damp,
                          "clipped_frac": float((q.abs() == qmax).float().mean())}
        else:
            v = t.float().half() if t.is_floating_point() else t
            deq[name] = v.float() if t.is_floating_point() else v
            tb[name] = TensorBytes(name, "fp16", [v.numpy().tobytes() if not t.is_floating_point() else v.view(torch.int16).numpy().tobytes()])
            info[name] = {"class": tensor_class(name), "passthrough": "fp16"}
    lqer_names: list[str] = []
    if lqer and lqer_rank > 0:
        # "worst" = largest Hessian-weighted output error (comparable across tensors: same units as the loss's
        # input perturbation); tensors without a Hessian compete on their plain squared error.
        lqer_names = sorted(errs, key=lambda n: -errs[n])[:lqer_top]
        for name in lqer_names:
            w = state_dict[name].float()
            E = w - deq[name]
            if lqer_factor_dtype == "int8":  # golfpack's LQER (packer/quantize.lqer_factors, formats/records.lqer_apply)
                fq, fs = lqer_factors(E, lqer_rank)
                before = float((E * E).sum())
                deq[name] = lqer_apply(deq[name].float(), fq.numpy(), fs.numpy(), lqer_rank)
                tb[name].streams += [fq.numpy().tobytes(), fs.numpy().tobytes()]
                after = float(((w - deq[name]) ** 2).sum())
                info[name]["lqer"] = {"rank": lqer_rank, "factors": "int8 (golfpack)", "err_before": before, "err_after": after}
                continue
            U, S, Vh = torch.linalg.svd(E, full_matrices=False)
            A, B = U[:, :lqer_rank] * S[:lqer_rank], Vh[:lqer_rank]
            A_, B_ = A.half().float(), B.half().float()
            tb[name].streams += [A.half().numpy().tobytes(), B.half().numpy().tobytes()]
            before = float((E * E).sum())
            deq[name] = deq[name] + A_ @ B_
            after = float(((w - deq[name]) ** 2).sum())
            info[name]["lqer"] = {"rank": lqer_rank, "factors": lqer_factor_dtype, "err_before": before, "err_after": after}
    out = {n: (deq[n].to(state_dict[n].dtype) if state_dict[n].is_floating_point() else deq[n]) for n in state_dict}
    per_tensor = {n: {**info[n], **{f"bytes_{k}": v for k, v in compress_sizes(b.blob()).items()}} for n, b in tb.items()}
    whole = compress_sizes(b"".join(b.blob() for b in tb.values()))
    report = {
        "method": f"records: GPTQ(act-order, damp {DAMP}, block {BLOCK}) + SDClip int6 (k attn {ATTN_K} / mlp {MLP_K}), "
                  f"embed int{emb_bits} k={emb_k}" + (f", LQER r{lqer_rank} top{lqer_top} ({lqer_factor_dtype})" if lqer else ""),
        "total": whole,
        "lqer_tensors": lqer_names,
        "per_tensor": per_tensor,
    }
    return out, report


__all__ = ["collect_hessians", "gptq", "quantize_records_recipe", "sdclip_scale", "compress_sizes", "tensor_class"]
