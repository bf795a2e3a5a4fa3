"""The exported standalone decoder loads QGv3 artifacts alone (stdlib + numpy + torch), bit-exactly."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from golfpack.formats.codecs import available_codecs
from golfpack.formats.qgv3 import encode_qgv3, tensor_digest
from golfpack.formats.records import TensorRecord
from golfpack.formats.spec import TensorSpec
from golfpack.packer.decoder import decoder_source, export_decoder
from golfpack.packer.quantize import quantize_tensor

# The child runs isolated (-I: no PYTHONPATH, no user site, cwd outside the repo) and cannot import golfpack.
CHILD = textwrap.dedent(
    """
    import hashlib, importlib.util, json, sys
    sys.modules["golfpack"] = None  # the decoder must not need golfpack
    spec = importlib.util.spec_from_file_location("qg3_decode", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = {}
    for path in sys.argv[2:]:
        try:
            sd = mod.load(path)
        except Exception as e:
            out[path] = {"error": f"{type(e).__name__}: {e}"}
            continue
        raw = lambda t: t.contiguous().reshape(-1).view(__import__("torch").uint8).numpy().tobytes()
        out[path] = {n: [str(t.dtype), list(t.shape), hashlib.sha256(raw(t)).hexdigest()] for n, t in sd.items()}
    print(json.dumps(out))
    """
)

# The readable decoder's size ceiling: it costs submission bytes (the reader's limits and checks, and the 2.8 KB
# rans decoder, which saves hundreds of KB on a 16 MB model).
DECODER_CEILING = 18_500


def _records() -> list[TensorRecord]:
    g = torch.Generator().manual_seed(7)
    out = []
    for bits in range(2, 9):
        out.append(quantize_tensor(f"w{bits}", torch.randn(48, 64, generator=g), TensorSpec.parse(f"int{bits}")))
        out.append(quantize_tensor(f"v{bits}", torch.randn(5, 6, generator=g), TensorSpec.parse(f"int{bits}:absmax")))
    out.append(quantize_tensor("bf", torch.randn(32, 16, generator=g).bfloat16(), TensorSpec.parse("int6")))
    for spec, t in (
        ("fp16", torch.randn(40, generator=g)),
        ("bf16", torch.randn(8, 8, generator=g)),
        ("fp32", torch.randn(3, generator=g)),
        ("exact", torch.randn(9, generator=g).bfloat16()),
        ("exact", torch.randn(4, generator=g).double()),
        ("exact", torch.arange(-3, 9)),
        ("exact", torch.tensor([True, False, True])),
        ("exact", torch.arange(5, dtype=torch.uint8)),
    ):
        out.append(quantize_tensor(f"p_{len(out)}", t, TensorSpec.parse(spec)))
    out.append(
        TensorRecord(
            "empty",
            (0, 8),
            "float32",
            TensorSpec.parse("int4"),
            q=np.zeros((0, 8), np.int8),
            scales=np.zeros(0, np.float16),
        )
    )
    return out


def _run(decoder, paths, cwd) -> dict:
    proc = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, str(decoder), *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_exported_decoder_loads_every_layout_exactly(tmp_path) -> None:
    dec = tmp_path / "qg3_decode.py"
    n = export_decoder(dec)
    assert n == dec.stat().st_size == len(decoder_source().encode()) and n < DECODER_CEILING
    compile(dec.read_text(), str(dec), "exec")
    records = _records()
    want = {r.name: [str(r.dequantize().dtype), list(r.shape), tensor_digest(r.dequantize())] for r in records}
    paths = []
    for codec in available_codecs():
        for blocks in ("separate", "solid"):
            p = tmp_path / f"m_{codec}_{blocks}.qg3"
            p.write_bytes(encode_qgv3(records, config={"x": 1}, policy=None, codec=codec, blocks=blocks))
            paths.append(p)
    got = _run(dec, paths, tmp_path)
    for p in paths:
        assert got[str(p)] == want, p.name  # same names, order, dtypes, shapes and bytes


def test_exported_decoder_refuses_corruption(tmp_path) -> None:
    dec = tmp_path / "qg3_decode.py"
    export_decoder(dec)
    data = encode_qgv3(_records()[:3], config=None, policy=None, codec="zlib")
    bad_block = tmp_path / "bad_block.qg3"
    bad_block.write_bytes(data[:-3] + bytes([data[-3] ^ 1]) + data[-2:])
    bad_magic = tmp_path / "bad_magic.qg3"
    bad_magic.write_bytes(b"X" + data[1:])
    got = _run(dec, [bad_block, bad_magic], tmp_path)
    assert "checksum" in got[str(bad_block)]["error"]
    assert "not a QGv3" in got[str(bad_magic)]["error"]


def test_missing_optional_codec_message(monkeypatch) -> None:
    ns: dict = {}
    exec(compile(decoder_source(), "qg3_decode.py", "exec"), ns)
    for mod, cid in (("brotli", 4), ("zstandard", 3)):
        monkeypatch.setitem(sys.modules, mod, None)  # as if not installed
        with pytest.raises(ImportError, match=f"pip install {mod}"):
            ns["_unz"](cid, b"\x00", 1)


def test_decoder_source_agrees_with_the_format_constants() -> None:
    """The standalone decoder spells the format's numbers out (it may not import golfpack): they must be qgv3_constants'."""
    import ast

    from golfpack.formats import qgv3_constants as K

    src = decoder_source()
    tree = ast.parse(src)
    dt = next(n.value for n in tree.body if isinstance(n, ast.Assign) and n.targets[0].id == "DT")
    table = ast.literal_eval(dt)
    assert list(table) == list(K.STORAGE_DTYPES)  # same dtype names, same order
    assert {k: np.dtype(v).itemsize for k, v in table.items()} == {
        k: np.dtype(v).itemsize for k, v in K.STORAGE_DTYPES.items()
    }
    assert f'struct.unpack_from("{K.PREAMBLE.format}", b)' in src and f"pos = {K.PREAMBLE.size} + hs" in src
    assert repr(K.MAGIC).replace("'", '"') in src and f"ver != {K.VERSION}" in src
    ids = {"raw": 0, "raw deflate": 1, "props byte + raw lzma1": 2, "zstd": 3, "brotli": 4, "rans": 5}
    assert {k.name.lower(): int(k) for k in K.Codec} == {"raw": 0, "zlib": 1, "lzma": 2, "zstd": 3, "brotli": 4, "rans": 5}
    assert "codec ids: " + ", ".join(f"{v} {k}" for k, v in ids.items()) in src
    assert f'_i(k["codec"], {max(K.Codec)})' in src
    # the rans decoder's numbers: precision and lower bound 2^16, lanes and tables capped, steps bounded
    assert K.RANS_LOW == 65536 and K.RANS_PRECISION == 16 and "L, P = np.empty(n, np.uint8), 0, np.uint64(65536), np.uint64(16)" in src
    assert f"lo_n = max(1, -(-n // {K.RANS_MAX_STEPS}))" in src and f"max({K.RANS_MAX_LANES}, lo_n)" in src
    assert f"D, S, T = v(1 << 40), v(n), v(1 if ids else {K.RANS_MAX_TABLES})" in src
    assert f's["kind"] in ({int(K.StreamKind.LEVELS)}, {int(K.StreamKind.SUBSCALES)})' in src and f's["layout"] == {int(K.Layout.DENSE)}' in src
    assert f'_i(s["kind"], {max(K.StreamKind)})' in src and f'!= ({int(K.StreamKind.SUBSCALES)}, k)' in src
    assert f's["layout"] == {int(K.Layout.SHUFFLE)}' in src
