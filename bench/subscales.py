"""subscales: fp16 group scales vs quantized (k-bit) sub-scales vs asymmetric groups, at equal bytes (issue #12 item 1/2).

    PYTHONPATH=src python bench/subscales.py --model samtruss|nolanvild [--configs a,b,...]

Each config sets the block matrices' spec (embedding int8:mse, 1-D/control tensors fp16, as `int6g+tok8`);
symmetric configs are packed to a real QGv3 artifact (lzma), written, loaded fresh (`load_any`) and
evaluated on the first 32,769 official val tokens (seq_len 1024). `asym<b>:g<N>s<k>` configs are
llama.cpp Q<b>_K-style asymmetric groups (levels 0..2^b-1, a k-bit sub-scale AND a k-bit sub-min per group,
one fp16 scale and one fp16 min a row), simulated here (no format support): their val_bpb is of the
dequantized weights and their bytes are ESTIMATED as the symmetric g<N>s<k> artifact's bytes plus the
lzma-compressed size difference of the two level/sub-scale/min payloads (`_payload_lzma`), so the two
compare on one estimator. No GPTQ (no Hessians): rounding to nearest throughout.
Results: bench/results/subscales.json; timings carry the load average (os.getloadavg()).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golfpack.formats.spec import TensorSpec  # noqa: E402
from golfpack.loading import load_any  # noqa: E402
from golfpack.packer.pack import pack_state_dict  # noqa: E402
from golfpack.packer.policy import PRESETS, _layered  # noqa: E402
from golfpack.packer.quantize import quantize_subscales, quantize_tensor  # noqa: E402
from quant_gap import model_bench  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "subscales.json"
CONFIGS = ("int6+tok8", "int6:g64", "int6:g64s6", "int6:g32s6", "int5:g64", "int5:g64s6", "int5:g32s6", "int5:g32s4",
           "int4:g32s6", "int4:g64", "asym4:g32s6", "asym5:g32s6")
# the narrow widths, where the scales are a larger share and the gaps rise above the noise of 32k tokens
LOW = ("int4:g32", "int4:g32s6", "int4:g64", "int4:g64s6", "int4:g32s4", "int3:g32", "int3:g32s6", "int3:g64s6", "asym3:g32s6",
       "asym4:g32s6")


def policy(mat: str):
    return PRESETS["int6+tok8"] if mat == "int6+tok8" else _layered(f"m={mat}", embed="int8:mse", mlp=mat, attn=mat, other=mat)


def _payload_lzma(parts: list[np.ndarray]) -> int:
    return len(lzma.compress(b"".join(np.ascontiguousarray(p).astype(np.uint8).tobytes() for p in parts), preset=9 | lzma.PRESET_EXTREME))


def asym_groups(w: torch.Tensor, bits: int, group: int, k: int) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Q<b>_K-style asymmetric group quantization of a 2-D weight: (dequantized fp32, [levels, sub-scales, sub-mins] uint8)."""
    w = w.float()
    rows, cols = w.shape
    ng = -(-cols // group)
    pad = torch.zeros(rows, ng * group)
    pad[:, :cols] = w
    g = pad.view(rows, ng, group)
    valid = torch.zeros(ng * group, dtype=torch.bool)
    valid[:cols] = True
    vm = valid.view(ng, group)[None]
    lo = torch.where(vm, g, torch.full_like(g, float("inf"))).amin(-1).clamp_max(0.0)
    hi = torch.where(vm, g, torch.full_like(g, float("-inf"))).amax(-1).clamp_min(0.0)
    top = (1 << bits) - 1
    d = ((hi - lo) / top).clamp_min(2.0**-24)
    S, sub = quantize_subscales(d, k)
    M, subm = quantize_subscales((-lo).clamp_min(2.0**-24), k)
    ds = S.float()[:, None] * sub.float()
    ms = M.float()[:, None] * subm.float()
    u = torch.clamp(torch.round((g + ms[..., None]) / ds[..., None]), 0, top)
    deq = (u * ds[..., None] - ms[..., None]).view(rows, -1)[:, :cols]
    return deq, [u.view(rows, -1)[:, :cols].to(torch.uint8).numpy(), sub.numpy(), subm.numpy()]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("samtruss", "nolanvild"), required=True)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--low", action="store_true", help="the LOW configs instead (results under '<model> low')")
    ap.add_argument("--tokens", type=int, default=32_769)
    args = ap.parse_args()
    m, sd, cfg, val, ev, log, t0 = model_bench(args.model, args.tokens)
    raw = ev(sd)
    log(f"raw {raw:.4f}")
    rows: list[dict] = []
    arts: dict[str, tuple[int, dict]] = {}
    for c in (LOW if args.low else args.configs.split(",")):
        t = time.perf_counter()
        if c.startswith("asym"):
            bits, rest = int(c[4]), c.split(":")[1]
            group, k = int(rest[1:].split("s")[0]), int(rest.split("s")[1])
            sym = f"int{bits}:g{group}s{k}"
            if sym not in arts:
                arts[sym] = _pack(sd, cfg, sym)
            sym_bytes, sym_recs = arts[sym]
            pol = policy(sym)
            state = dict(load_any(sym_recs["path"]).state_dict)
            est_sym = est_asym = 0
            for name, spec in pol.resolve(sd).items():
                tsr = sd[name]
                if spec.kind == "int" and spec.group and tsr.ndim == 2 and tsr.is_floating_point():
                    deq, parts = asym_groups(tsr, bits, group, k)
                    state[name] = deq.to(tsr.dtype)
                    r = quantize_tensor(name, tsr, TensorSpec.parse(sym))
                    est_asym += _payload_lzma(parts)
                    est_sym += _payload_lzma([r.q.astype(np.int16) + r.spec.qmax, r.subscales])
                    est_asym += 2 * tsr.shape[0]  # the extra fp16 row min
            nb = sym_bytes + est_asym - est_sym
            bpb = ev(state)
            rows.append({"config": c, "bytes": nb, "bytes_note": f"estimate: {sym} artifact {sym_bytes:,} + lzma payload difference "
                         f"{est_asym - est_sym:+,}", "val_bpb": bpb, "gap": bpb - raw, "s": round(time.perf_counter() - t, 1),
                         "load": os.getloadavg()[0]})
        else:
            if c not in arts:
                arts[c] = _pack(sd, cfg, c)
            nb, info = arts[c]
            bpb = ev(load_any(info["path"]).state_dict)
            rows.append({"config": c, "bytes": nb, "val_bpb": bpb, "gap": bpb - raw, "s": round(time.perf_counter() - t, 1),
                         "load": os.getloadavg()[0]})
        log(f"{c}: {rows[-1]['bytes']:,} bytes, gap {rows[-1]['gap']:+.4f}")
    allres = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    allres[args.model + (" low" if args.low else "")] = {"raw_val_bpb": raw, "val_tokens": int(len(val)), "seq_len": m["seq"], "rows": rows,
                          "seconds": round(time.perf_counter() - t0, 1), "loadavg_end": os.getloadavg()[0]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(allres, indent=1) + "\n")
    return 0


_TMP = tempfile.mkdtemp(prefix="gp_subscales_")


def _pack(sd, cfg, mat: str) -> tuple[int, dict]:
    art = pack_state_dict(sd, policy(mat), config=cfg)
    p = Path(_TMP) / (mat.replace(":", "_").replace("+", "_") + ".qg3")
    p.write_bytes(art.data)
    return len(art.data), {"path": p}


if __name__ == "__main__":
    sys.exit(main())
