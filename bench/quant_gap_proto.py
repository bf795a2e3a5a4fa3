"""Prototype quantizers for issue #12, measured against golfpack's `int6+tok8` preset and the records' recipe.

Per model: fresh-load-equivalent val_bpb (quantize -> dequantize -> load into golfpack's GPT -> evaluate)
on the first N official val tokens (default 32,769, seq_len 1024), and approximate compressed bytes.

Methods (block matrices = attn c_q/c_k/c_v/proj + mlp fc/proj at int6 unless said; for the prototypes the
embedding is int8 per-row absmax round-to-nearest and 1-D/control tensors pass through fp16, identical across
prototypes so only the block-matrix quantizer differs; a `+recemb` suffix, e.g. gptq4_g128+recemb, stores the
embedding as the records do instead: int8 SDClip k=20, GPTQ'd through the LM-head-input Hessian):
  preset_int6+tok8   golfpack's preset, packed to a real QGv3 artifact and fresh-loaded with load_any
  records            bench/records_recipe.py (GPTQ act-order + SDClip int6, GPTQ'd int8 k=20 embedding)
  records+lqer       the same + LQER rank 4 on the 3 worst tensors (int8 factors)
  rtn_row_absmax     per-row absmax scale, no floor (shows what the preset's 1/qmax floor costs)
  sdclip_row         per-row SDClip (k=12 MLP / 13 attn), round-to-nearest
  rtn_g{32,64,128}   group-wise absmax scales (fp16, one per row per g input columns), round-to-nearest
  mse_g{32,64,128}   group-wise, per-group clip ratio searched over 1.0..0.5 for min squared error
  gptqsd<b>_row      the records' block quantizer (GPTQ + per-row SDClip) at b bits (rule names take a bit width:
                     mse4_g128 = int4, groups of 128, MSE clip; no digit = int6)
  gptq_g{64,128}     GPTQ (act-order, damp 0.01, block 128) with group scales (per-group MSE clip) chosen
                     when the column loop first reaches the group
Hessians/calibration: pydoc pages (golfpack.demo_data.demo_documents) encoded with the sp1024 tokenizer,
never val tokens.

Bytes: `bytes_packed_lzma` = lzma-9e of (bit-packed levels + fp16 scales + fp16 passthrough), whole model;
`bytes_int8_lzma` = the same with levels in int8 containers (as the records ship them); for the preset also
the real QGv3 artifact size. LQER factors are counted in records+lqer.

    PYTHONPATH=src python bench/quant_gap_proto.py --model samtruss|nolanvild [--tokens 32769]
Writes bench/results/quant_gap_proto.json (merged across runs, one entry per model).
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from golfpack.demo_data import demo_documents  # noqa: E402
from golfpack.evaluator.api import evaluate  # noqa: E402
from golfpack.formats.shards import load_tokens  # noqa: E402
from golfpack.loading import load_any  # noqa: E402
from golfpack.model import build_model  # noqa: E402
from golfpack.packer.pack import pack_state_dict  # noqa: E402
from golfpack.packer.policy import resolve_policy  # noqa: E402
from golfpack.tokenizer import build_luts  # noqa: E402
from records_recipe import (  # noqa: E402
    ATTN_K,
    MLP_K,
    collect_hessians,
    gptq,
    quantize_records_recipe,
    sdclip_scale,
    tensor_class,
)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GOLFPACK_SHARED_DATA", "/work/shared/data"))
RESULTS = REPO / "bench" / "results" / "quant_gap_proto.json"
MODELS = {
    "samtruss": SHARED / "artifacts/SamTruss_873402c_final_model.int8.ptz",
    "nolanvild": SHARED / "checkpoints/nolanvild_final_model.pt",
    "taleef": SHARED / "checkpoints/Taleef7_final_model.pt",
}
VAL = SHARED / "text/fineweb_val_000000_first1040298tok.bin"
TOK = SHARED / "tokenizers/fineweb_1024_bpe.model"
QMAX6 = 31


# ------------------------------------------------------------------------------------------------
# helpers


def is_block_matrix(name: str, t: torch.Tensor) -> bool:
    return t.ndim == 2 and tensor_class(name) in ("attn", "mlp")


def pack_bits(q: np.ndarray, bits: int) -> bytes:
    qmax = 2 ** (bits - 1) - 1
    u = (q.astype(np.int16).reshape(-1) + qmax).astype(np.uint8)
    b = np.unpackbits(u[:, None], axis=1)[:, 8 - bits:]
    return np.packbits(b.reshape(-1)).tobytes()


class Store:
    """Collects the streams of one quantized model for byte estimates."""

    def __init__(self) -> None:
        self.packed: list[bytes] = []
        self.int8: list[bytes] = []

    def levels(self, q: torch.Tensor, scales: torch.Tensor, bits: int) -> None:
        qn = q.to(torch.int8).numpy()
        s = scales.half().numpy().tobytes()
        self.packed += [pack_bits(qn, bits), s]
        self.int8 += [qn.tobytes(), s]

    def raw(self, b: bytes) -> None:
        self.packed.append(b)
        self.int8.append(b)

    def sizes(self) -> dict[str, int]:
        p, i = b"".join(self.packed), b"".join(self.int8)
        return {
            "bytes_packed_raw": len(p),
            "bytes_packed_lzma": len(lzma.compress(p, preset=9 | lzma.PRESET_EXTREME)),
            "bytes_int8_lzma": len(lzma.compress(i, preset=9 | lzma.PRESET_EXTREME)),
        }


def group_rtn(w: torch.Tensor, g: int, qmax: int, ratios=(1.0,)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (levels (rows, cols), scales (rows, cols//g) fp16-rounded, dequantized)."""
    rows, cols = w.shape
    assert cols % g == 0, (cols, g)
    W = w.float().view(rows, cols // g, g)
    amax = W.abs().amax(dim=2).clamp_min(1e-10)
    best_err = None
    for r in ratios:
        s = (amax * r / qmax).half().float().clamp_min(1e-10)
        q = torch.clamp(torch.round(W / s[..., None]), -qmax, qmax)
        err = ((W - q * s[..., None]) ** 2).sum(dim=2)
        if best_err is None:
            best_err, best_q, best_s = err, q, s
        else:
            m = err < best_err
            best_err = torch.where(m, err, best_err)
            best_s = torch.where(m, s, best_s)
            best_q = torch.where(m[..., None], q, best_q)
    deq = (best_q * best_s[..., None]).view(rows, cols)
    return best_q.view(rows, cols), best_s, deq


MSE_RATIOS = tuple(1.0 - 0.05 * i for i in range(11))  # 1.0 .. 0.5


def mse_group_scale_fn(qmax: int):
    def fn(cur: torch.Tensor) -> torch.Tensor:
        _, s, _ = group_rtn(cur, cur.shape[1], qmax, MSE_RATIOS)
        return s[:, 0]
    return fn


def quantize_proto(sd: dict[str, torch.Tensor], method: str, hessians: dict[str, torch.Tensor] | None) -> tuple[dict, dict]:
    out: dict[str, torch.Tensor] = {}
    st = Store()
    rec_emb = method.endswith("+recemb")  # embedding as the records do it (int8 SDClip k=20, GPTQ'd via the head Hessian)
    method = method.removesuffix("+recemb")
    for name, t in sd.items():
        if not t.is_floating_point():
            out[name] = t
            st.raw(t.numpy().tobytes())
            continue
        w = t.float()
        if is_block_matrix(name, t):
            cls = tensor_class(name)
            # method names: <rule><bits?>_<g|row>, e.g. mse_g64 (int6), gptq5_g64 (int5), sdclip_row
            mm = re.match(r"^(rtn|mse|gptqsd|gptq|sdclip)(\d?)_(row_absmax|row|g\d+)$", method)
            if mm is None:
                raise ValueError(method)
            rule, bits = mm.group(1), int(mm.group(2) or 6)
            qmax = 2 ** (bits - 1) - 1
            if rule == "rtn" and mm.group(3) == "row_absmax":
                s = (w.abs().amax(dim=1) / qmax).half().float().clamp_min(1e-10)
                q = torch.clamp(torch.round(w / s[:, None]), -qmax, qmax)
                dq = q * s[:, None]
            elif rule == "gptqsd":  # the records' block-matrix quantizer at another bit width: GPTQ + SDClip row scales
                s = sdclip_scale(w, ATTN_K if cls == "attn" else MLP_K, qmax)
                q, s, _ = gptq(w, hessians[name], s, qmax)
                dq = q * s[:, None]
            elif rule == "sdclip":
                s = sdclip_scale(w, ATTN_K if cls == "attn" else MLP_K, qmax)
                q = torch.clamp(torch.round(w / s[:, None]), -qmax, qmax)
                dq = q * s[:, None]
            elif rule in ("rtn", "mse"):
                g = int(mm.group(3)[1:])
                q, s, dq = group_rtn(w, g, qmax, MSE_RATIOS if rule == "mse" else (1.0,))
            else:  # gptq with groups
                g = int(mm.group(3)[1:])
                q, s, _ = gptq(w, hessians[name], None, qmax, group=g, group_scale_fn=mse_group_scale_fn(qmax))
                s = s.half().float()
                rows, cols = w.shape
                dq = (q.view(rows, cols // g, g) * s[..., None]).view(rows, cols)
            st.levels(q, s, bits)
            out[name] = dq.to(t.dtype)
        elif t.ndim == 2 and tensor_class(name) == "embed":
            if rec_emb and hessians is not None and name in hessians:
                s = sdclip_scale(w, 20.0, 127)
                q, s, _ = gptq(w, hessians[name], s, 127)
            else:
                s = (w.abs().amax(dim=1) / 127).half().float().clamp_min(1e-10)
                q = torch.clamp(torch.round(w / s[:, None]), -127, 127)
            st.levels(q, s, 8)
            out[name] = (q * s[:, None]).to(t.dtype)
        else:
            h = w.half()
            st.raw(h.view(torch.int16).numpy().tobytes())
            out[name] = h.to(t.dtype)
    return out, st.sizes()


def records_store_sizes(rep: dict) -> dict[str, int]:
    return {"bytes_int8_lzma": rep["total"]["lzma"], "bytes_int8_brotli": rep["total"].get("brotli"), "bytes_int8_raw": rep["total"]["raw"]}


def preset_bytes(art) -> dict[str, int]:
    st = Store()
    for r in art.records:
        if r.q is not None:
            st.levels(torch.from_numpy(np.asarray(r.q)), torch.from_numpy(np.asarray(r.scales, dtype=np.float32)), int(r.spec.bits))
        else:
            st.raw(np.asarray(r.data).tobytes())
    return {"bytes_artifact_qgv3": len(art.data), **st.sizes()}


def calib_batches(n_seqs: int, seq_len: int, batch: int = 4, shards: str | None = None) -> list[torch.Tensor]:
    import sentencepiece as spm

    if shards:  # a model with its own tokenizer: calibrate on its TRAIN shards
        a = torch.from_numpy(load_tokens(shards, n_seqs * seq_len).astype(np.int64)).view(-1, seq_len)
        return [a[i:i + batch] for i in range(0, a.shape[0], batch)]

    sp = spm.SentencePieceProcessor(model_file=str(TOK))
    ids: list[int] = []
    for d in demo_documents():
        ids.append(1)
        ids.extend(sp.encode(d))
        if len(ids) >= n_seqs * seq_len:
            break
    a = torch.tensor(ids[: n_seqs * seq_len], dtype=torch.long).view(n_seqs, seq_len)
    return [a[i:i + batch] for i in range(0, n_seqs, batch)]


# ------------------------------------------------------------------------------------------------


def best_bytes(r: dict) -> int | None:
    """The smaller of the two lzma estimates (records: int8 containers + lzma, its own accounting)."""
    c = [r[k] for k in ("bytes_packed_lzma", "bytes_int8_lzma") if r.get(k)]
    return min(c) if c else None


def print_tables() -> None:
    """Markdown tables of bench/results/quant_gap_proto.json, each model's rows sorted by bytes."""
    allres = json.loads(RESULTS.read_text())
    for model, res in allres.items():
        raw = res["rows"][0]["val_bpb"]
        print(f"\n### {model} ({res['source']}; {res['val_tokens']:,} val tokens, seq_len {res['seq_len']}; raw val_bpb {raw:.4f})\n")
        print("| method | val_bpb | gap | bytes (min lzma est.) | packed+lzma | int8+lzma | QGv3 artifact |")
        print("|---|---|---|---|---|---|---|")
        for r in sorted(res["rows"][1:], key=lambda r: best_bytes(r) or 0):
            cells = [f"{r[k]:,}" if r.get(k) else "" for k in ("bytes_packed_lzma", "bytes_int8_lzma", "bytes_artifact_qgv3")]
            print(f"| {r['method']} | {r['val_bpb']:.4f} | {r['gap']:+.4f} | {best_bytes(r):,} | " + " | ".join(cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--table", action="store_true", help="only print the markdown tables of the results file")
    ap.add_argument("--model", help=f"{', '.join(sorted(MODELS))}, or a name for --ckpt")
    ap.add_argument("--ckpt", help="any other checkpoint (e.g. bench/train_pathological.py's final_model.pt)")
    ap.add_argument("--val", help="with --ckpt: its held-out val shard pattern")
    ap.add_argument("--tok", help="with --ckpt: its tokenizer")
    ap.add_argument("--calib", help="with --ckpt: train shards to calibrate on (never its val)")
    ap.add_argument("--tokens", type=int, default=32_769)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--calib-seqs", type=int, default=16)
    ap.add_argument("--methods", default="")
    args = ap.parse_args()
    if args.table:
        print_tables()
        return 0
    if args.model is None:
        ap.error("--model is required")
    t0 = time.perf_counter()
    path = Path(args.ckpt) if args.ckpt else MODELS[args.model]
    lm = load_any(path)
    sd, cfg = lm.state_dict, lm.config
    val = load_tokens(args.val or str(VAL), args.tokens)
    luts = build_luts(args.tok or str(TOK), cfg.vocab_size)

    def ev(state: dict[str, torch.Tensor]) -> float:
        m = build_model(cfg, state)
        return evaluate(m, val, luts, seq_len=args.seq_len, batch_size=8).val_bpb

    rows: list[dict] = []
    raw = ev(sd)
    print(f"[{args.model}] raw {raw:.4f}  ({time.perf_counter() - t0:.0f}s)", flush=True)
    rows.append({"method": "raw (as loaded)", "val_bpb": raw, "gap": 0.0})

    def add(method: str, bpb: float, sizes: dict, extra: dict | None = None) -> None:
        rows.append({"method": method, "val_bpb": bpb, "gap": bpb - raw, **sizes, **(extra or {})})
        print(f"[{args.model}] {method:22s} bpb {bpb:.4f} gap {bpb - raw:+.4f} {sizes}  ({time.perf_counter() - t0:.0f}s)", flush=True)

    wanted = set(args.methods.split(",")) if args.methods else None
    want = lambda m: wanted is None or m in wanted  # noqa: E731

    # (a) golfpack preset, real artifact, fresh load
    if want("preset"):
        art = pack_state_dict(sd, resolve_policy("int6+tok8"), config=cfg)
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "m.qg3"
            p.write_bytes(art.data)
            lq = load_any(p)
            bpb = ev(lq.state_dict)
        add("preset int6+tok8", bpb, preset_bytes(art))

    # Hessians from pydoc text (never val)
    th = time.perf_counter()
    model = build_model(cfg, sd)
    H = collect_hessians(model, calib_batches(args.calib_seqs, args.seq_len, shards=args.calib))
    del model
    print(f"[{args.model}] hessians: {len(H)} in {time.perf_counter() - th:.0f}s", flush=True)

    # (b) records' recipe
    if want("records"):
        dq, rep = quantize_records_recipe(sd, H, lqer=False)
        add("records", ev(dq), records_store_sizes(rep))
        dq, rep = quantize_records_recipe(sd, H, lqer=True)
        add("records+lqer", ev(dq), records_store_sizes(rep), {"lqer_tensors": rep["lqer_tensors"]})

    # (c) prototypes
    protos = ["rtn_row_absmax", "sdclip_row", "rtn_g32", "rtn_g64", "rtn_g128", "mse_g32", "mse_g64", "mse_g128", "gptq_g64", "gptq_g128"]
    protos += [m for m in (wanted or ()) if m not in protos and m not in ("preset", "records")]  # e.g. mse5_g64, gptq5_g64
    for m in protos:
        if not want(m):
            continue
        tq = time.perf_counter()
        dq, sizes = quantize_proto(sd, m, H)
        add(m, ev(dq), sizes, {"quantize_s": round(time.perf_counter() - tq, 1)})

    res = {
        "model": args.model,
        "source": str(path.relative_to(SHARED)) if path.is_relative_to(SHARED) else str(path),
        "config": cfg.to_dict(),
        "val_tokens": int(len(val)),
        "seq_len": args.seq_len,
        "calibration": (f"train shards {args.calib}" if args.calib else "pydoc pages (demo_documents) via sp1024")
        + f", {args.calib_seqs} x {args.seq_len} tokens",
        "rows": rows,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    allres = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if wanted is not None and args.model in allres:  # a partial rerun: replace only the methods it measured
        old = allres[args.model]
        new_names = {r["method"] for r in rows[1:]}
        res["rows"] = [r for r in old["rows"] if r["method"] not in new_names] + rows[1:]
        res["partial_reruns"] = old.get("partial_reruns", []) + [{"methods": sorted(new_names), "raw_val_bpb": raw}]
    allres[args.model] = res
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(allres, indent=1) + "\n")
    print(f"\n{'method':24s} {'val_bpb':>8s} {'gap':>8s} {'packed+lzma':>12s} {'int8+lzma':>10s}")
    for r in rows:
        print(f"{r['method']:24s} {r['val_bpb']:8.4f} {r['gap']:+8.4f} {str(r.get('bytes_packed_lzma', '')):>12s} {str(r.get('bytes_int8_lzma', '')):>10s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
