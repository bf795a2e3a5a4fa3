"""The exported standalone decoder rebuilds group-wise scaled tensors (scale_group, and k-bit sub-scales) bit-exactly."""

from __future__ import annotations

import torch

from golfpack.formats.qgv3 import encode_qgv3, tensor_digest
from golfpack.formats.spec import GROUP_SIZES, TensorSpec
from golfpack.packer.decoder import decoder_source, export_decoder
from golfpack.packer.quantize import quantize_tensor
from tests.formats.test_qgv3_subscales import subscale_records
from tests.packer.test_decoder import DECODER_CEILING, _run


def test_exported_decoder_loads_group_wise_scales_exactly(tmp_path) -> None:
    dec = tmp_path / "qg3_decode.py"
    assert export_decoder(dec) == len(decoder_source().encode()) < DECODER_CEILING
    g = torch.Generator().manual_seed(11)
    records = []
    for bits in (2, 4, 5, 6, 8):
        for group in GROUP_SIZES:
            w = (torch.randn(6, 2 * group + 7, generator=g) * 0.04).to(torch.bfloat16 if bits == 5 else torch.float32)
            records.append(quantize_tensor(f"w{bits}_{group}", w, TensorSpec("int", bits=bits, clip="sd12", group=group)))
    records.append(quantize_tensor("row", torch.randn(5, 40, generator=g), TensorSpec.parse("int6")))
    records += subscale_records()  # every g x width 2..8 with quantized sub-scales (tests/formats/test_qgv3_subscales.py)
    want = {r.name: [str(r.dequantize().dtype), list(r.shape), tensor_digest(r.dequantize())] for r in records}
    paths = []
    for blocks in ("separate", "solid"):
        p = tmp_path / f"m_{blocks}.qg3"
        p.write_bytes(encode_qgv3(records, codec="lzma", blocks=blocks))
        paths.append(p)
    got = _run(dec, paths, tmp_path)
    for p in paths:
        assert got[str(p)] == want, p.name
