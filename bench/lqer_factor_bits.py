"""lqer_factor_bits: which LQER factor width and fit pay, at about equal factor bytes (issue #12 item 4).

    PYTHONPATH=src python bench/lqer_factor_bits.py [CHECKPOINT]   (default: the shared nolanvild checkpoint)

For every block matrix with a Hessian (records_recipe.collect_hessians on 8 x 1024 pydoc tokens, never val):
the summed output error tr(E H E^T) of its GPTQ int3/int4 residual, without LQER and with rank/width pairs of
about equal factor bytes (r4 int8, r5 int6, r8 int4), by the plain SVD fit and the activation-aware one
(`Hw`: lqer_factors(..., hessian=H)). Factor bytes are the raw payload (levels at their width + 2r fp16 scales).
Result (nolanvild, load ~5): docs/policies.md, "LQER".
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
sys.path.insert(0, str(Path(__file__).resolve().parent))
from golfpack.formats.records import lqer_apply  # noqa: E402
from golfpack.formats.spec import TensorSpec  # noqa: E402
from golfpack.loading import load_any  # noqa: E402
from golfpack.model import build_model  # noqa: E402
from golfpack.packer.quantize import lqer_factors, quantize_tensor  # noqa: E402
from quant_gap_proto import calib_batches  # noqa: E402
from records_recipe import collect_hessians  # noqa: E402

VARIANTS = (("r4 int8", 4, 8, False), ("r5 int6", 5, 6, False), ("r8 int4", 8, 4, False),
            ("r4 int8 Hw", 4, 8, True), ("r5 int6 Hw", 5, 6, True), ("r8 int4 Hw", 8, 4, True), ("r8 int8 Hw", 8, 8, True))


def out_err(e: torch.Tensor, h: torch.Tensor) -> float:
    return float(torch.einsum("ij,jk,ik->", e.double(), h.double(), e.double()))


def main() -> None:
    ck = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/checkpoints/nolanvild_final_model.pt"
    lm = load_any(ck)
    sd, cfg = lm.state_dict, lm.config
    hs = collect_hessians(build_model(cfg, sd), calib_batches(8, 1024))
    tot: dict[tuple[str, str], list[float]] = {}
    t0 = time.perf_counter()
    for name, w in sd.items():
        if w.ndim != 2 or name not in hs or "tok_emb" in name:
            continue
        h = hs[name]
        for base in ("int3:mse+gptq", "int4:mse+gptq"):
            wq = quantize_tensor(name, w, TensorSpec.parse(base), hessian=h).dequantize().float()
            e = w.float() - wq
            rows, cols = w.shape
            levels = rows * cols * int(base[3]) / 8
            got = {"none": (0.0, out_err(e, h))}
            for tag, rank, bits, weighted in VARIANTS:
                fq, fs = lqer_factors(e, rank, bits, hessian=h if weighted else None)
                got[tag] = (rank * (rows + cols) * bits / 8 + 4 * rank, out_err(w.float() - lqer_apply(wq, fq.numpy(), fs.numpy(), rank), h))
            for tag, (b, err) in got.items():
                t = tot.setdefault((base, tag), [0.0, 0.0, 0.0])
                t[0], t[1], t[2] = t[0] + b, t[1] + err, t[2] + levels
    print(f"{ck}: {time.perf_counter() - t0:.0f} s, load {os.getloadavg()[0]:.1f}")
    for (base, tag), (b, err, levels) in tot.items():
        print(f"{base:16s} {tag:12s} factor bytes {b:9.0f} ({100 * b / levels:4.1f}% of the levels)  sum tr(EHE^T) {err:.5g} "
              f"({err / tot[(base, 'none')][1]:.3f}x)")


if __name__ == "__main__":
    main()
