"""sha256 of the QGv3 bytes of every preset on every shared checkpoint (layout-change regression check).

Run before and after a refactor that must not change the bytes; the two JSON files must be equal.

    python bench/preset_hashes.py --out bench/results/preset_hashes.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
INPUTS = [
    SHARED / "checkpoints" / "nolanvild_final_model.pt",
    SHARED / "checkpoints" / "Taleef7_final_model.pt",
    SHARED / "checkpoints" / "g3n-inferno_final_model.pt",
    SHARED / "checkpoints" / "nolanvild_final_model.int8.ptz",
    SHARED / "artifacts" / "SamTruss_873402c_final_model.int8.ptz",
]
CODECS = ("lzma", "zstd", "brotli")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    ap.add_argument("--check", type=Path, default=None, help="compare with this JSON; exit 1 on any difference")
    args = ap.parse_args()
    import golfpack.packer.policy as P
    from golfpack.packer.pack import pack_file

    rows: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for src in INPUTS:
            if not src.is_file():
                print(f"skip {src.name}: not in shared/", file=sys.stderr)
                continue
            for preset in P.PRESETS:
                for codec in CODECS:
                    out = Path(tmp) / "a.qg3"
                    pack_file(src, out, policy=P.resolve_policy(preset), codec=codec, budget=10**9, require_config=False)
                    h = hashlib.sha256(out.read_bytes()).hexdigest()
                    key = f"{src.name} {preset} {codec}"
                    rows[key] = h
                    print(f"{key:<60} {out.stat().st_size:>10,} {h}", flush=True)
    if args.check:
        want = json.loads(args.check.read_text())
        # pinned rows must be byte-identical; rows of presets added since the pin are listed, not failed
        diff = sorted(k for k in want if want[k] != rows.get(k))
        new = sorted(set(rows) - set(want))
        print(f"{len(want) - len(diff)} of {len(want)} pinned rows identical to {args.check}"
              + (f"; differ: {diff}" if diff else "") + (f"; {len(new)} new rows (presets added since the pin)" if new else ""))
        if diff:
            return 1
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
