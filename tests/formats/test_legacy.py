"""Legacy int8_clean_per_row_v1 .ptz: read, dequantize exactly, write the same layout back."""

from __future__ import annotations

import lzma
import zlib

import pytest
import torch

from golfpack.errors import GolfpackError
from golfpack.formats.checkpoint import load_state_dict
from golfpack.formats.legacy import (
    container_bytes,
    dequantize_int8_ptz,
    read_int8_ptz,
    records_to_int8_container,
    write_int8_ptz,
)
from golfpack.packer.policy import Policy
from golfpack.packer.quantize import quantize_tensor


def test_read_real_ptz_matches_its_raw_checkpoint(nolanvild_ptz, nolanvild_pt) -> None:
    obj = read_int8_ptz(nolanvild_ptz)
    assert obj["__quant_format__"] == "int8_clean_per_row_v1"
    sd = dequantize_int8_ptz(obj)
    raw = load_state_dict(nolanvild_pt)
    assert set(sd) == set(raw)
    for k, t in raw.items():
        assert sd[k].dtype == t.dtype and sd[k].shape == t.shape
    # passthrough matrices were stored fp16 and restored to fp32
    assert torch.equal(sd["blocks.0.attn.c_q.weight"], raw["blocks.0.attn.c_q.weight"].half().float())
    assert torch.equal(sd["blocks.0.attn_scale"], raw["blocks.0.attn_scale"])
    err = (sd["tok_emb.weight"] - raw["tok_emb.weight"]).abs().max()
    assert 0 < float(err) < 0.02


def test_taleef_ptz_with_no_int8_tensors(taleef_ptz, taleef_pt) -> None:
    obj = read_int8_ptz(taleef_ptz)
    assert obj["quantized"] == {} and "qmeta" not in obj
    sd = dequantize_int8_ptz(obj)
    assert sd["tok_emb.weight"].dtype == torch.bfloat16
    assert torch.equal(sd["tok_emb.weight"], load_state_dict(taleef_pt)["tok_emb.weight"].half().bfloat16())


def test_records_to_container_round_trip(tmp_path, nolanvild_pt) -> None:
    sd = load_state_dict(nolanvild_pt)
    sd["extra_vector"] = torch.linspace(-1, 1, 70_001)  # per-tensor int8 path
    sd["step"] = torch.tensor([5], dtype=torch.int32)
    for name in ("int8", "int6+tok8"):
        pol = Policy.preset(name)
        specs = pol.resolve(sd)
        recs = [quantize_tensor(n, t, specs[n]) for n, t in sd.items()]
        path = tmp_path / f"{name}.ptz"
        size = write_int8_ptz(records_to_int8_container(recs), path)
        assert size == path.stat().st_size
        back = dequantize_int8_ptz(read_int8_ptz(path))
        for r in recs:
            assert torch.equal(back[r.name], r.dequantize()), r.name
            assert back[r.name].dtype == r.dequantize().dtype


def test_lzma_compressed_container_is_read_too(tmp_path, taleef_ptz) -> None:
    obj = read_int8_ptz(taleef_ptz)
    p = tmp_path / "x.ptz"
    p.write_bytes(lzma.compress(container_bytes(obj)))
    assert set(dequantize_int8_ptz(read_int8_ptz(p))) == set(dequantize_int8_ptz(obj))


def test_bad_legacy_files(tmp_path) -> None:
    with pytest.raises(GolfpackError, match="not found"):
        read_int8_ptz(tmp_path / "missing.ptz")
    junk = tmp_path / "junk.ptz"
    junk.write_bytes(b"hello world, not compressed")
    with pytest.raises(GolfpackError, match="not a zlib/lzma/zstd"):
        read_int8_ptz(junk)
    trunc = tmp_path / "trunc.ptz"
    trunc.write_bytes(zlib.compress(bytes(range(256)) * 40)[:50])
    with pytest.raises(GolfpackError, match="corrupt"):
        read_int8_ptz(trunc)
    notsave = tmp_path / "notsave.ptz"
    notsave.write_bytes(zlib.compress(b"plain bytes"))
    with pytest.raises(GolfpackError, match="not a torch.save"):
        read_int8_ptz(notsave)
    with pytest.raises(GolfpackError, match="not an int8_clean_per_row_v1"):
        dequantize_int8_ptz({"a": torch.zeros(1)})


@pytest.mark.parametrize("codec", ["zlib", "lzma", "zstd"])
def test_decompression_bomb_is_refused_without_inflating(codec: str) -> None:
    import lzma
    import tracemalloc
    import zlib

    import zstandard

    from golfpack.formats.legacy import decompress_container

    zeros = b"\0" * (48 << 20)
    data = {"zlib": lambda: zlib.compress(zeros, 9), "lzma": lambda: lzma.compress(zeros),
            "zstd": lambda: zstandard.ZstdCompressor(level=3).compress(zeros)}[codec]()
    assert decompress_container(data, "ok.ptz")[0] == zeros  # under the cap: fine
    tracemalloc.start()
    try:
        with pytest.raises(GolfpackError, match="inflates past 1,000,000 bytes"):
            decompress_container(data, "bomb.ptz", max_raw=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20  # stopped near the cap (+ lzma's 8 MiB dictionary), never the full 48 MiB


@pytest.mark.parametrize("codec", ["zlib", "lzma", "zstd"])
def test_truncated_container_is_corrupt_not_short(codec: str) -> None:
    import zstandard

    from golfpack.formats.legacy import decompress_container

    payload = bytes(range(256)) * 400
    data = {"zlib": zlib.compress, "lzma": lzma.compress, "zstd": zstandard.ZstdCompressor().compress}[codec](payload)
    assert decompress_container(data, "ok.ptz") == (payload, codec)
    with pytest.raises(GolfpackError, match="corrupt compressed stream"):
        decompress_container(data[: len(data) // 2], "half.ptz")
