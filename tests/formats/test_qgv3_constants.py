"""qgv3_constants: the format's numbers, pinned (ids never renumber), and a module that imports nothing of golfpack."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from golfpack.formats import bitpack, codecs, qgv3
from golfpack.formats import qgv3_constants as K
from golfpack.formats.spec import TensorSpec

SOURCE = Path(K.__file__)


def test_imports_only_the_standard_library() -> None:
    """Every import in the module (nested ones too) is a stdlib module: an outside reader can copy it whole."""
    tree = ast.parse(SOURCE.read_text(encoding="utf-8"))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            names.append(node.module or "")
    assert names, "the walk found no imports at all"
    tops = {n.split(".")[0] for n in names}
    assert "golfpack" not in tops
    assert tops <= set(sys.stdlib_module_names) | {"__future__"}, tops - set(sys.stdlib_module_names)


def test_codec_ids_never_renumber() -> None:
    assert {c.name: int(c) for c in K.Codec} == {"RAW": 0, "ZLIB": 1, "LZMA": 2, "ZSTD": 3, "BROTLI": 4, "RANS": 5}
    assert K.CODECS == {"raw": 0, "zlib": 1, "lzma": 2, "zstd": 3, "brotli": 4, "rans": 5}
    # the rans codec's fixed numbers (docs/qgv3.md "rans"): changing one breaks every rans stream on disk
    assert (K.RANS_PRECISION, K.RANS_LOW, K.RANS_MAX_LANES, K.RANS_MAX_STEPS, K.RANS_MAX_TABLES) == (16, 1 << 16, 4096, 1 << 16, 256)
    assert codecs.Codec is K.Codec and codecs.CODECS is K.CODECS  # one table, codecs.py builds on it


def test_enums_and_preamble_pinned() -> None:
    assert {k.name: int(k) for k in K.StreamKind} == {"LEVELS": 0, "SCALES": 1, "PASSTHROUGH": 2, "SUBSCALES": 3, "OUTLIERS": 4}
    assert {x.name: int(x) for x in K.Layout} == {"PLAIN": 0, "SHUFFLE": 1, "DENSE": 2, "BYTE": 3}
    assert K.MAGIC == b"QGv3\r\n\x1a\n" and K.VERSION == 3 and K.FLAGS_NONE == 0
    assert K.PREAMBLE.format == "<8sHBBIII" and K.PREAMBLE.size == 24
    assert K.PREAMBLE_OFFSETS == {"magic": 0, "version": 8, "header_codec": 10, "flags": 11, "header_stored": 12, "header_raw": 16,
                                  "header_crc": 20}
    assert list(K.LEVEL_BITS) == [2, 3, 4, 5, 6, 7, 8]
    assert K.LEVEL_LAYOUTS == (K.Layout.DENSE, K.Layout.BYTE) and K.VALUE_LAYOUTS == (K.Layout.PLAIN, K.Layout.SHUFFLE)
    # the front door re-exports the same objects
    assert qgv3.MAGIC is K.MAGIC and qgv3.PREAMBLE is K.PREAMBLE and qgv3.StreamKind is K.StreamKind and qgv3.Limits is K.Limits


def test_key_sets_and_storage_tables_pinned() -> None:
    assert K.HEADER_KEYS == {"config", "policy", "meta", "tensors", "streams", "blocks"}
    assert K.TENSOR_KEYS_REQUIRED == {"name", "shape", "dtype", "spec", "digest", "group", "offset"}
    assert K.TENSOR_KEYS_INT == {"scales", "scale_offset"} and K.TENSOR_KEYS_OPTIONAL == {"rows", "scale_group", "lqer"}
    assert K.LQER_KEYS == {"rank", "bits", "offset", "scale_offset"} and list(K.LQER_RANKS) == list(range(1, 65))
    assert K.STREAM_KEYS == {"kind", "count", "layout", "block", "at"} and K.STREAM_KEYS_OPTIONAL == {"bits", "dtype", "alone"}
    assert K.BLOCK_KEYS == {"codec", "raw", "stored", "crc"}
    # order matters: it is the canonical stream order
    assert list(K.STORAGE_DTYPES.items()) == [
        ("float16", "<f2"), ("bfloat16", "<u2"), ("float32", "<f4"), ("float64", "<f8"), ("int64", "<i8"),
        ("int32", "<i4"), ("int16", "<i2"), ("int8", "i1"), ("uint8", "u1"), ("bool", "u1"),
    ]
    assert {k: v.itemsize for k, v in qgv3.STORAGE_DTYPES.items()} == {k: int(v[-1]) for k, v in K.STORAGE_DTYPES.items()}
    assert K.PASS_STORAGE == {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
    assert (K.SCALES_PER_ROW, K.SCALES_PER_TENSOR) == ("float16", "float32")


def test_limits_defaults_and_validation() -> None:
    d = K.DEFAULT_LIMITS
    assert (d.max_header_bytes, d.max_tensors, d.max_ndim, d.max_name_len, d.max_raw_bytes, d.max_numel) == (
        16 << 20, 100_000, 8, 1024, 256 << 20, 1 << 28)
    with pytest.raises(ValueError, match="max_tensors must be a non-negative int"):
        K.Limits(max_tensors=-1)
    with pytest.raises(ValueError, match="max_numel"):
        K.Limits(max_numel=1.5)  # type: ignore[arg-type]


def test_one_qmax() -> None:
    """qgv3_constants.qmax is the definition; TensorSpec.qmax and bitpack.qmax_of give the same numbers."""
    want = {2: 1, 3: 3, 4: 7, 5: 15, 6: 31, 7: 63, 8: 127}
    assert {b: K.qmax(b) for b in want} == want
    assert {b: bitpack.qmax_of(b) for b in want} == want
    assert {b: TensorSpec(kind="int", bits=b).qmax for b in want} == want
    for bad in (1, 9, 6.0, True):
        with pytest.raises(ValueError, match="bits must be an int in 2..8"):
            K.qmax(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as e:
        bitpack.qmax_of(9)
    assert e.value.param == "bits"  # a UsageError naming the parameter
