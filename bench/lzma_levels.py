"""Which lzma match search wins on level streams: every LEVELS stream of the shared models' presets, each lzma
variant (props x encoder, each layout) on the planner's own sample, beside rans where the codec set tries it.

Why: each of a search's exact packs measures every variant on every big stream's sample, and EXTREME costs about twice
LITERAL. In a codec set with rans the planner tries LITERAL only on levels under 8 bits; this bench is the evidence.
Prints one row per stream and writes bench/results/lzma_levels.json.

    python bench/lzma_levels.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
MODELS = [("checkpoints/nolanvild_final_model.pt", ("int6+tok8", "int6g+tok8", "int8")),
          ("checkpoints/Taleef7_final_model.pt", ("int6+tok8",)),
          ("checkpoints/g3n-inferno_final_model.pt", ("int6+tok8", "int5mlp+int6attn+tok8")),
          ("artifacts/SamTruss_873402c_final_model.int8.ptz", ("int6+tok8", "int6g+tok8")),
          ("artifacts/NeoMakesGames_final_model.int8.ptz", ("int6+tok8",))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "lzma_levels.json"))
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    from golfpack.formats.codecs import LZMA_PROPS_CANDIDATES, LzmaEncoder
    from golfpack.formats.qgv3_constants import Codec, StreamKind
    from golfpack.formats.qgv3_plan import _rans_fits, _sample
    from golfpack.formats.qgv3_streams import collect, layout_bytes
    from golfpack.formats.qgv3_write import compress_with
    from golfpack.loading import load_any
    from golfpack.packer.pack import quantize_state_dict
    from golfpack.packer.policy import Policy

    rows = []
    print(f"{'model':<28} {'policy':<22} {'bits':>4} {'values':>10} {'sampled':>7} {'LITERAL':>9} {'EXTREME':>9} {'rans':>9}  winner")
    for rel, policies in MODELS:
        sd = load_any(SHARED / rel).state_dict
        for pol in policies:
            policy = Policy.preset(pol)
            contents = collect(quantize_state_dict(sd, policy.resolve(sd)), config=None, policy=policy.to_dict(), meta={})
            for s in contents.streams:
                if s.kind != StreamKind.LEVELS:
                    continue
                vals = s.values()
                samp = _sample(vals, s.itemsize)
                best: dict[str, int] = {}
                t = {"LITERAL": 0.0, "EXTREME": 0.0}
                for lay in s.layouts():
                    data = layout_bytes(s.kind, lay, samp, s.bits)
                    for enc in LzmaEncoder:
                        for props in LZMA_PROPS_CANDIDATES:
                            t0 = time.process_time()
                            n = len(compress_with(Codec.LZMA, data, props, enc))
                            t[enc.name] += time.process_time() - t0
                            best[enc.name] = min(best.get(enc.name, n), n)
                    if _rans_fits(s.kind, lay, s.bits):
                        n = len(compress_with(Codec.RANS, data, None, LzmaEncoder.EXTREME))
                        best["rans"] = min(best.get("rans", n), n)
                win = min(best, key=best.__getitem__)
                row = {"model": Path(rel).name, "policy": pol, "bits": s.bits, "values": int(vals.size), "sampled": bool(samp.size != vals.size),
                       "bytes": best, "winner": win, "cpu_s": {k: round(v, 3) for k, v in t.items()},
                       "extreme_gain_pct": round(100 * (best["LITERAL"] / best["EXTREME"] - 1), 3)}
                rows.append(row)
                print(f"{row['model'][:28]:<28} {pol:<22} {s.bits:>4} {row['values']:>10,} {str(row['sampled']):>7} {best['LITERAL']:>9,} "
                      f"{best['EXTREME']:>9,} {best.get('rans', 0):>9,}  {win}", flush=True)
    ext_wins = [r for r in rows if r["bytes"]["EXTREME"] < r["bytes"]["LITERAL"]]
    set_changes = [r for r in rows if r["winner"] == "EXTREME"]
    cpu = {k: round(sum(r["cpu_s"][k] for r in rows), 2) for k in ("LITERAL", "EXTREME")}
    print(f"{len(rows)} level streams: EXTREME smaller than LITERAL on {len(ext_wins)}, the smallest of all (lzma+rans) on {len(set_changes)}; "
          f"CPU seconds LITERAL {cpu['LITERAL']} vs EXTREME {cpu['EXTREME']} (load {os.getloadavg()[0]:.2f})")
    Path(args.out).write_text(json.dumps({"bench": "lzma_levels", "rows": rows, "extreme_smaller": len(ext_wins),
                                          "extreme_smallest_in_set": len(set_changes), "cpu_s": cpu}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
