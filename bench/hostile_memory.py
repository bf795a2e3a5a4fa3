"""Peak memory of reading the worst legal QGv3 files (issue 11 class 4): a few-KB file that declares the
most the Limits allow. Each case is crafted (constant data compresses to almost nothing), then read in a
fresh subprocess by the library (decode_qgv3 + state_dict) and by the exported decoder (load, digests
checked); peak = ru_maxrss minus the baseline after imports. Prints a table, writes bench/results/hostile_memory.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import resource, sys, importlib.util
import torch; torch.set_num_threads(1)
from golfpack.formats.qgv3 import decode_qgv3
from golfpack.packer.decoder import decoder_source
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] == "lib":
    sd = decode_qgv3(open(sys.argv[2], "rb").read()).state_dict()
else:
    p = sys.argv[2] + ".dec.py"; open(p, "w").write(decoder_source())
    s = importlib.util.spec_from_file_location("d", p); m = importlib.util.module_from_spec(s); s.loader.exec_module(m)
    sd = m.load(sys.argv[2], check=True)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)
"""


def _file(streams, tensors, raw: bytes, codec: str = "zlib") -> bytes:
    from golfpack.formats.codecs import compress

    z = compress(codec, raw)
    from golfpack.formats.qgv3_constants import CODECS

    h = {"config": None, "policy": None, "meta": None, "streams": streams, "tensors": tensors,
         "blocks": [{"codec": int(CODECS[codec]), "raw": len(raw), "stored": len(z), "crc": zlib.crc32(z)}]}
    hj = json.dumps(h, sort_keys=True, separators=(",", ":")).encode()
    return struct.pack("<8sHBBIII", b"QGv3\r\n\x1a\n", 3, 0, 0, len(hj), len(hj), zlib.crc32(hj)) + hj + z


def _zeros_digest(nbytes: int) -> str:
    h, chunk = hashlib.sha256(), bytes(1 << 24)
    while nbytes:
        k = min(nbytes, len(chunk))
        h.update(chunk[:k])
        nbytes -= k
    return h.hexdigest()


def cases() -> dict[str, tuple[bytes, int]]:
    """name -> (file bytes, declared bytes = block raw + rebuilt state dict)."""
    out = {}
    one = struct.pack("<f", 1.0)
    for name, bits, layout, dtype, n in (("int2 dense -> fp32 (512 MiB out)", 2, 2, "float32", 1 << 27),
                                         ("int8 byte -> fp32 (512 MiB out)", 8, 3, "float32", 1 << 27),
                                         ("int2 dense -> float64 (512 MiB out)", 2, 2, "float64", 1 << 26)):
        q = (1 << (bits - 1)) - 1
        lv = bytes([q]) * n if layout == 3 else bytes([sum(q << (bits * k) for k in range(8 // bits))]) * (n * bits // 8)
        raw = lv + one
        item = 4 if dtype == "float32" else 8
        streams = [{"kind": 0, "bits": bits, "layout": layout, "count": n, "block": 0, "at": 0},
                   {"kind": 1, "dtype": "float32", "layout": 0, "count": 1, "block": 0, "at": len(lv)}]
        tensors = [{"name": "w", "shape": [n], "dtype": dtype, "spec": f"int{bits}", "digest": _zeros_digest(n * item),
                    "group": 0, "offset": 0, "scales": 1, "scale_offset": 0}]
        out[name] = (_file(streams, tensors, raw), len(raw) + n * item)
    n = 1 << 27  # 256 MiB of fp16 passthrough: the raw-size limit
    streams = [{"kind": 2, "dtype": "float16", "layout": 1, "count": n, "block": 0, "at": 0}]
    tensors = [{"name": "p", "shape": [n], "dtype": "float16", "spec": "exact", "digest": _zeros_digest(2 * n), "group": 0, "offset": 0}]
    out["fp16 passthrough shuffled (256 MiB raw, 256 MiB out)"] = (_file(streams, tensors, bytes(2 * n)), 4 * n)
    return out


def main() -> None:
    rows = []
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    with tempfile.TemporaryDirectory() as d:
        for name, (data, declared) in cases().items():
            p = Path(d) / "case.qg3"
            p.write_bytes(data)
            row = {"case": name, "file_bytes": len(data), "declared_bytes": declared}
            for reader in ("lib", "dec"):
                r = subprocess.run([sys.executable, "-c", CHILD, reader, str(p)], capture_output=True, text=True, env=env, timeout=600)
                assert r.returncode == 0, r.stderr[-2000:]
                row[f"{reader}_peak_bytes"] = int(r.stdout.split()[-1])
                row[f"{reader}_x_declared"] = round(row[f"{reader}_peak_bytes"] / declared, 2)
            rows.append(row)
            print(f"{name:<52} file {len(data):>7,} B  declared {declared / 2**20:>6.0f} MiB  "
                  f"lib {row['lib_peak_bytes'] / 2**20:>6.0f} MiB ({row['lib_x_declared']}x)  "
                  f"dec {row['dec_peak_bytes'] / 2**20:>6.0f} MiB ({row['dec_x_declared']}x)  load {os.getloadavg()[0]:.1f}", flush=True)
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    (ROOT / "bench" / "results" / "hostile_memory.json").write_text(json.dumps({"rows": rows, "loadavg": os.getloadavg()}, indent=1))


if __name__ == "__main__":
    main()
