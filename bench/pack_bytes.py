"""Bytes of one quantized model under every container: torch.save + zlib/lzma/zstd/brotli vs QGv3.

For each model the SAME TensorRecords (policy int6+tok8 by default, the baseline's quantile clip) are
stored as
  (1) torch.save(int8 container) + zlib-9      - what the baseline and most records ship
  (2) torch.save(int8 container) + lzma-9e
  (3) torch.save(int8 container) + zstd-22     (and brotli-11 when installed)
  (4) QGv3 with each available codec, the default set `lzma+rans`, and `best` (each stream with its own best codec)
  (5) the order-0 entropy bound: per tensor, numel x H0(levels) bits, plus fp16 scales and passthrough
      bytes as stored - what a per-tensor static entropy coder with free tables could reach.
Models: the real nolanvild and Taleef7 checkpoints, the NeoMakesGames legacy .ptz (dequantized), and a
synthetic baseline-size model (9 layers, d512, MLP 3x, vocab 1024) whose matrices copy nolanvild's
per-row std distribution and tail weight (kurtosis) per matrix kind.

    python bench/pack_bytes.py [--policy int6+tok8] [--models nolanvild,taleef,neo,synthetic]
Prints a table and writes bench/results/pack_bytes.json.
"""

from __future__ import annotations

import argparse
import json
import lzma
import math
import os
import platform
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from golfpack._io import write_bytes_atomic
from golfpack.formats.checkpoint import load_state_dict
from golfpack.formats.legacy import container_bytes, dequantize_int8_ptz, read_int8_ptz, records_to_int8_container
from golfpack.formats.records import TensorRecord
from golfpack.packer.pack import quantize_state_dict
from golfpack.packer.policy import resolve_policy

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GOLFPACK_SHARED_DATA", REPO.parent / "shared" / "data"))
RESULTS = REPO / "bench" / "results" / "pack_bytes.json"


# ------------------------------------------------------------------------------------------------
# models


def real_models() -> dict[str, tuple[dict[str, torch.Tensor], str]]:
    return {
        "nolanvild": (load_state_dict(SHARED / "checkpoints/nolanvild_final_model.pt"), "checkpoints/nolanvild_final_model.pt"),
        "taleef": (load_state_dict(SHARED / "checkpoints/Taleef7_final_model.pt"), "checkpoints/Taleef7_final_model.pt"),
        "neo": (
            dequantize_int8_ptz(read_int8_ptz(SHARED / "artifacts/NeoMakesGames_final_model.int8.ptz")),
            "artifacts/NeoMakesGames_final_model.int8.ptz (dequantized)",
        ),
    }


def _kind(name: str) -> str | None:
    for k in ("attn.c_q", "attn.c_k", "attn.c_v", "attn.proj", "mlp.fc", "mlp.proj", "tok_emb"):
        if k in name:
            return k
    return None


def row_stats(sd: dict[str, torch.Tensor]) -> dict[str, dict[str, np.ndarray | float]]:
    """Per matrix kind: the pooled per-row stds, and the median per-row excess kurtosis."""
    stds: dict[str, list[np.ndarray]] = {}
    kurts: dict[str, list[np.ndarray]] = {}
    for n, t in sd.items():
        k = _kind(n)
        if k is None or t.ndim != 2:
            continue
        x = t.double()
        x = x - x.mean(dim=1, keepdim=True)
        var = x.pow(2).mean(dim=1)
        stds.setdefault(k, []).append(var.sqrt().numpy())
        kurts.setdefault(k, []).append((x.pow(4).mean(dim=1) / var.pow(2) - 3.0).numpy())
    return {k: {"stds": np.concatenate(stds[k]), "excess_kurtosis": float(np.median(np.concatenate(kurts[k])))} for k in stds}


def synthetic_baseline(stats: dict[str, dict[str, np.ndarray | float]], seed: int = 0, *, layers: int = 9,
                       dim: int = 512, hidden: int = 1536, vocab: int = 1024) -> dict[str, torch.Tensor]:
    """Baseline-shaped state dict (default 9x512, MLP 3x, vocab 1024; KV width dim/2); each row: std drawn from
    the real rows of that kind, Student-t values with the degrees of freedom that give the real median
    kurtosis (excess = 6 / (df - 4))."""
    rng = np.random.default_rng(seed)
    L, d, kv = layers, dim, dim // 2

    def mat(kind: str, rows: int, cols: int) -> torch.Tensor:
        st = stats[kind]
        ek = max(float(st["excess_kurtosis"]), 0.05)
        df = 4.0 + 6.0 / ek
        z = rng.standard_t(df, size=(rows, cols)) / math.sqrt(df / (df - 2.0))
        s = rng.choice(np.asarray(st["stds"]), size=rows, replace=True)
        return torch.from_numpy((z * s[:, None]).astype(np.float32))

    sd: dict[str, torch.Tensor] = {"tok_emb.weight": mat("tok_emb", vocab, d).to(torch.bfloat16)}
    if L // 2:  # a single block has no U-Net skip
        sd["skip_weights"] = torch.ones(L // 2, d)
    for i in range(L):
        p = f"blocks.{i}."
        sd[p + "attn.c_q.weight"] = mat("attn.c_q", d, d)
        sd[p + "attn.c_k.weight"] = mat("attn.c_k", kv, d)
        sd[p + "attn.c_v.weight"] = mat("attn.c_v", kv, d)
        sd[p + "attn.proj.weight"] = mat("attn.proj", d, d)
        sd[p + "attn.q_gain"] = torch.full((8,), 1.5)
        sd[p + "mlp.fc.weight"] = mat("mlp.fc", hidden, d)
        sd[p + "mlp.proj.weight"] = mat("mlp.proj", d, hidden)
        sd[p + "attn_scale"] = torch.ones(d)
        sd[p + "mlp_scale"] = torch.ones(d)
        sd[p + "resid_mix"] = torch.stack((torch.ones(d), torch.zeros(d)))
    return sd


# ------------------------------------------------------------------------------------------------
# measurements


def order0_bound(records: list[TensorRecord]) -> dict[str, float]:
    sym = scales = passthrough = 0.0
    for r in records:
        if r.spec.kind == "int":
            assert r.q is not None and r.scales is not None
            _, counts = np.unique(r.q, return_counts=True)
            p = counts / counts.sum()
            sym += float(-(counts * np.log2(p)).sum()) / 8.0
            scales += r.scales.nbytes
        else:
            assert r.data is not None
            passthrough += r.data.nbytes
    return {"symbols": sym, "scales": scales, "passthrough": passthrough, "total": sym + scales + passthrough}


def legacy_sizes(records: list[TensorRecord]) -> dict[str, int]:
    raw = container_bytes(records_to_int8_container(records))
    out = {
        "torch.save": len(raw),
        "torch.save+zlib-9": len(zlib.compress(raw, 9)),
        "torch.save+lzma-9e": len(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)),
    }
    import zstandard

    out["torch.save+zstd-22"] = len(zstandard.ZstdCompressor(level=22).compress(raw))
    try:
        import brotli

        out["torch.save+brotli-11"] = len(brotli.compress(raw, quality=11))
    except ImportError:
        pass
    return out


def qgv3_sizes(records: list[TensorRecord], policy_dict: dict, config: dict | None) -> dict[str, int]:
    """QGv3 bytes with each codec for the whole file, and 'best' (each stream with its own best codec)."""
    from golfpack.formats.codecs import available_codecs
    from golfpack.formats.qgv3 import decode_qgv3, encode_qgv3

    out: dict[str, int] = {}
    for codec in [*available_codecs(), "lzma+rans", "best"]:
        data = encode_qgv3(records, config=config, policy=policy_dict, codec=codec, meta={"bench": "pack_bytes"})
        back = decode_qgv3(data)  # every measured artifact must also round-trip exactly
        for r, b in zip(records, back.records):
            assert torch.equal(r.dequantize(), b.dequantize()), (codec, r.name)
        out[f"QGv3/{codec}"] = len(data)
    return out


def measure(name: str, sd: dict[str, torch.Tensor], policy_name: str, source: str) -> dict:
    from golfpack.errors import GolfpackError
    from golfpack.loading import infer_config

    t0 = time.perf_counter()
    policy = resolve_policy(policy_name)
    records = quantize_state_dict(sd, policy.resolve(sd))
    t_q = time.perf_counter() - t0
    try:
        config = infer_config(sd).to_dict()
    except GolfpackError:
        config = None
    sizes = legacy_sizes(records)
    sizes.update(qgv3_sizes(records, policy.to_dict(), config))
    bound = order0_bound(records)
    legacy_best = min(v for k, v in sizes.items() if k.startswith("torch.save+"))
    q = {k: v for k, v in sizes.items() if k.startswith("QGv3/")}
    row = {
        "model": name,
        "source": source,
        "params": sum(int(t.numel()) for t in sd.values()),
        "policy": policy_name,
        "quantize_seconds": round(t_q, 2),
        "sizes": sizes,
        "order0_bound": bound,
    }
    if q:
        best_codec = min(q, key=q.__getitem__)
        row["qgv3_best"] = {"codec": best_codec, "bytes": q[best_codec]}
        row["qgv3_best_vs_best_legacy"] = q[best_codec] - legacy_best
        row["qgv3_beats_legacy_1_to_3"] = all(
            q[best_codec] < sizes[k] for k in ("torch.save+zlib-9", "torch.save+lzma-9e", "torch.save+zstd-22")
        )
        row["qgv3_over_order0_bytes"] = q[best_codec] - bound["total"]
        row["qgv3_over_order0_pct"] = 100.0 * (q[best_codec] / bound["total"] - 1.0)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", default="int6+tok8")
    ap.add_argument("--models", default="nolanvild,taleef,neo,synthetic")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    reals = real_models()
    rows = []
    for name in wanted:
        if name == "synthetic":
            stats = row_stats(reals["nolanvild"][0])
            sd, src = synthetic_baseline(stats), "synthetic 9x512 mlp3x vocab1024, nolanvild per-row std/kurtosis"
        else:
            sd, src = reals[name]
        print(f"measuring {name} ({sum(int(t.numel()) for t in sd.values()):,} params) ...", file=sys.stderr)
        rows.append(measure(name, sd, args.policy, src))
    # table
    cols = sorted({k for r in rows for k in r["sizes"] if k != "torch.save"}, key=lambda k: (not k.startswith("torch"), k))
    head = f"{'container':<22}" + "".join(f"{r['model']:>14}" for r in rows)
    print(f"policy {args.policy}; bytes")
    print(head)
    print(f"{'params':<22}" + "".join(f"{r['params']:>14,}" for r in rows))
    for c in cols:
        print(f"{c:<22}" + "".join(f"{r['sizes'].get(c, float('nan')):>14,}" if c in r["sizes"] else f"{'-':>14}" for r in rows))
    print(f"{'order-0 bound':<22}" + "".join(f"{r['order0_bound']['total']:>14,.0f}" for r in rows))
    if all("qgv3_best" in r for r in rows):
        print(f"{'QGv3 best codec':<22}" + "".join(f"{r['qgv3_best']['codec']:>14}" for r in rows))
        print(f"{'QGv3 best - order0':<22}" + "".join(f"{r['qgv3_over_order0_bytes']:>14,.0f}" for r in rows))
        print(f"{'  (% over bound)':<22}" + "".join(f"{r['qgv3_over_order0_pct']:>13.2f}%" for r in rows))
        print(f"{'QGv3 beats (1)-(3)':<22}" + "".join(f"{str(r['qgv3_beats_legacy_1_to_3']):>14}" for r in rows))
    result = {
        "bench": "pack_bytes",
        "policy": args.policy,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "models": rows,
    }
    write_bytes_atomic(args.out, (json.dumps(result, indent=2) + "\n").encode())
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
