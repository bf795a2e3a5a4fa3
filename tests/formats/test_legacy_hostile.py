"""Issue 11 class 5: legacy int8 containers validated like QGv3 headers; legacy .pt expansion bounded."""

from __future__ import annotations

import io
import zipfile

import pytest
import torch

from golfpack.errors import FormatError
from golfpack.formats import checkpoint
from golfpack.formats.legacy import INT8_FORMAT, dequantize_int8_ptz, write_int8_ptz
from golfpack.loading import load_any


def _good() -> dict:
    return {"__quant_format__": INT8_FORMAT, "quantized": {"w": torch.ones(3, 4, dtype=torch.int8)},
            "scales": {"w": torch.ones(3, dtype=torch.float16)}, "dtypes": {"w": "float32"},
            "passthrough": {"b": torch.ones(4)}, "qmeta": {"w": {"scheme": "per_row", "axis": 0}}}


def _with(**changes) -> dict:
    d = _good()
    for k, v in changes.items():
        if v is KeyError:
            del d[k]
        else:
            d[k] = v
    return d


MALFORMED = {
    "quantized is a list": (_with(quantized=[torch.ones(3, 4, dtype=torch.int8)]), "'quantized' must be a dict"),
    "no scales": (_with(scales=KeyError), "'scales' must be a dict"),
    "no dtypes": (_with(dtypes=KeyError), "'dtypes' must be a dict"),
    "no quantized": (_with(quantized=KeyError), "'quantized' must be a dict"),
    "no passthrough": (_with(passthrough=KeyError), "'passthrough' must be a dict"),
    "scale rows != q rows": (_with(scales={"w": torch.ones(2, dtype=torch.float16)}), "one per row"),
    "qmeta a list": (_with(qmeta=[1]), "'qmeta' must be a dict"),
    "qmeta entry a string": (_with(qmeta={"w": "per_row"}), "qmeta\\['w'\\] is str"),
    "passthrough a list": (_with(passthrough=[torch.ones(1)]), "'passthrough' must be a dict"),
    "passthrough value not a tensor": (_with(passthrough={"b": [1.0]}), "passthrough\\['b'\\] is list"),
    "quantized value a string": (_with(quantized={"w": "x"}), "quantized\\['w'\\] is str"),
    "dtype not a string": (_with(dtypes={"w": 3}), "dtypes\\['w'\\] is int"),
    "scales for other names": (_with(scales={"v": torch.ones(3, dtype=torch.float16)}), "name different tensors"),
    "int16 levels": (_with(quantized={"w": torch.ones(3, 4, dtype=torch.int16)}), "expected torch.int8"),
    "integer scales": (_with(scales={"w": torch.ones(3, dtype=torch.int32)}), "expected a float tensor"),
    "per-tensor scale of 3 values on a 0-d q": (_with(quantized={"w": torch.ones((), dtype=torch.int8)}, qmeta=KeyError), "one per row"),
    "both quantized and passthrough": (_with(passthrough={"w": torch.ones(1)}), "both quantized and passthrough"),
    "orig dtypes a list": (_with(passthrough_orig_dtypes=["float32"]), "'passthrough_orig_dtypes' must be a dict"),
    "non-string key": (_with(dtypes={1: "float32"}), "not a non-empty string"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_int8_containers_are_format_errors(case, tmp_path) -> None:
    obj, match = MALFORMED[case]
    with pytest.raises(FormatError, match=match):
        dequantize_int8_ptz(obj)
    p = tmp_path / "bad.ptz"
    write_int8_ptz(obj, p)
    with pytest.raises(FormatError, match=match):  # and through the loader every command uses
        load_any(p)


def test_a_well_formed_container_still_loads(tmp_path) -> None:
    sd = dequantize_int8_ptz(_good())
    assert sd["w"].shape == (3, 4) and sd["w"].dtype == torch.float32 and torch.equal(sd["b"], torch.ones(4))


def test_stride_zero_views_are_refused_before_they_expand(tmp_path) -> None:
    p = tmp_path / "views.pt"
    torch.save({"tok_emb.weight": torch.zeros(1).expand(1 << 31)}, p)  # 8 GiB of fp32 claimed by a 4-byte storage
    assert p.stat().st_size < 4000
    with pytest.raises(FormatError, match="expand to more than"):
        load_any(p)
    q = tmp_path / "views.ptz"  # the same inside a compressed legacy container
    write_int8_ptz(_with(passthrough={"b": torch.zeros(1).expand(1 << 31)}), q)
    with pytest.raises(FormatError, match="expand to more than"):
        load_any(q)


def test_tied_weights_sharing_a_storage_still_load(tmp_path) -> None:
    w = torch.randn(64, 32)
    p = tmp_path / "tied.pt"
    torch.save({"a": w, "b": w, "c": w[:10]}, p)
    assert checkpoint.load_state_dict(p)["b"].shape == (64, 32)


def _deflated(obj, tmp_path):
    buf = io.BytesIO()
    torch.save(obj, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    p = tmp_path / "deflated.pt"
    with zipfile.ZipFile(p, "w") as z:
        for info in src.infolist():
            z.writestr(info.filename, src.read(info), compress_type=zipfile.ZIP_DEFLATED)
    return p


def test_deflate_compressed_storages_are_bounded_before_torch_load(tmp_path, monkeypatch) -> None:
    p = _deflated({"w": torch.zeros(1 << 20)}, tmp_path)  # 4 MiB of zeros in a few KB
    assert p.stat().st_size < 64_000
    monkeypatch.setattr(checkpoint, "MAX_ZIP_INFLATED_BYTES", 1 << 20)
    seen = []
    monkeypatch.setattr(checkpoint.torch, "load", lambda *a, **k: seen.append(1))
    with pytest.raises(FormatError, match="inflate to 4,194,.* bytes, over the 1,048,576-byte limit"):
        checkpoint.torch_load_path(p)
    assert not seen  # refused from the zip directory: torch.load never ran
    with pytest.raises(FormatError, match="inflate to"):
        checkpoint.torch_load_bytes(p.read_bytes())


def test_small_deflated_zips_still_load(tmp_path) -> None:
    p = _deflated({"w": torch.arange(10.0)}, tmp_path)
    assert torch.equal(checkpoint.load_state_dict(p)["w"], torch.arange(10.0))
