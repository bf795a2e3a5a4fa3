"""QGv3 `lqer` entries (docs/qgv3.md 8b): golden bytes of a tiny LQER artifact, and hostile entries refused by
both readers (the library's and the exported decoder) before anything is allocated."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from golfpack.errors import GolfpackError
from golfpack.formats.qgv3 import decode_qgv3, encode_qgv3
from golfpack.formats.records import TensorRecord
from golfpack.formats.spec import TensorSpec
from golfpack.packer.decoder import decoder_source
from tests.formats.test_qgv3 import rebuild, split

GOLDEN = Path(__file__).parent / "data" / "qgv3_lqer_golden.bin"
GOLDEN_SHA256 = "1d6c7463d87d4213b6e1cf0d4553c0280579aa448300e488f78f4d1dd3b82a85"  # sha256 of tests/formats/data/qgv3_lqer_golden.bin


def golden_records() -> list[TensorRecord]:
    """Fixed records, no RNG: an int4 (3, 4) tensor with a rank-2 int8 correction, and one without."""
    q = (np.arange(12, dtype=np.int16) % 5 - 2).astype(np.int8).reshape(3, 4)
    fq = np.array([1, -2, 3, 0, 4, -5, 10, -20, 30, 40, 5, -6, 7, -8], np.int8)  # A^T (2, 3), then B (2, 4)
    return [
        TensorRecord("w", (3, 4), "float32", TensorSpec.parse("int4+lqer2"), q=q, scales=np.array([0.5, 0.25, 1.0], np.float16),
                     lqer_q=fq, lqer_scales=np.array([0.125, 0.5, 0.0625, 0.25], np.float16), lqer_bits=8),
        TensorRecord("v", (2, 2), "float32", TensorSpec.parse("int8:absmax"), q=np.array([[1, -1], [2, 3]], np.int8),
                     scales=np.array([1.0, 2.0], np.float16)),
    ]


def golden_bytes() -> bytes:
    return encode_qgv3(golden_records(), config=None, policy={"name": "lqer-golden"}, codec="raw", meta=None)


def test_golden_bytes_and_values() -> None:
    data = golden_bytes()
    assert data == GOLDEN.read_bytes()
    assert hashlib.sha256(data).hexdigest() == GOLDEN_SHA256
    art = decode_qgv3(data)
    w = art.state_dict()["w"]
    # by hand: w = q * s + sum_k a_k b_k^T with a_0 = [1, -2, 3]/8, a_1 = [0, 4, -5]/2, b_0 = [10, -20, 30, 40]/16, b_1 = [5, -6, 7, -8]/4
    q = torch.tensor(golden_records()[0].q, dtype=torch.float64) * torch.tensor([0.5, 0.25, 1.0], dtype=torch.float64)[:, None]
    a = torch.tensor([[1, -2, 3], [0, 4, -5]], dtype=torch.float64) * torch.tensor([0.125, 0.5], dtype=torch.float64)[:, None]
    b = torch.tensor([[10, -20, 30, 40], [5, -6, 7, -8]], dtype=torch.float64) * torch.tensor([0.0625, 0.25], dtype=torch.float64)[:, None]
    assert w.tolist() == (q + a.T @ b).tolist()  # every value here is exact in fp32
    h = json.loads(data[24 : 24 + int.from_bytes(data[16:20], "little")])
    assert h["tensors"][0]["lqer"] == {"rank": 2, "bits": 8, "offset": 0, "scale_offset": 3}
    assert [(s["kind"], s.get("bits"), s["count"]) for s in h["streams"]] == [(0, 4, 12), (0, 8, 18), (1, None, 9)]
    assert h["tensors"][1]["offset"] == 14 and h["tensors"][1]["scale_offset"] == 7  # after w's factors in the shared streams


def _lqer(h: dict) -> dict:
    return h["tensors"][0]["lqer"]


HOSTILE = {
    "rank 0": lambda h: _lqer(h).update(rank=0),
    "rank too big": lambda h: _lqer(h).update(rank=65),
    "rank over min(rows, cols)": lambda h: (h["tensors"][0].update(spec="int4+lqer4"), _lqer(h).update(rank=4)),
    "rank not the spec's": lambda h: _lqer(h).update(rank=1),
    "rank a float": lambda h: _lqer(h).update(rank=2.0),
    "rank a bool": lambda h: _lqer(h).update(rank=True),
    "rank a string": lambda h: _lqer(h).update(rank="2"),
    "bits out of range": lambda h: _lqer(h).update(bits=9),
    "bits without a stream": lambda h: _lqer(h).update(bits=6),
    "bits of another stream": lambda h: _lqer(h).update(bits=4),
    "lqer not an object": lambda h: h["tensors"][0].update(lqer=[2, 8, 0, 3]),
    "missing key": lambda h: _lqer(h).pop("scale_offset"),
    "unknown key": lambda h: _lqer(h).update(sigma=1),
    "missing lqer entry": lambda h: h["tensors"][0].pop("lqer"),
    "lqer without +lqer spec": lambda h: h["tensors"][0].update(spec="int4"),
    "lqer on another tensor": lambda h: h["tensors"][1].update(lqer=dict(_lqer(h))),
    "factor shape mismatch": lambda h: h["tensors"][0].update(shape=[2, 6]),
    "factor offset wrong": lambda h: _lqer(h).update(offset=1),
    "factor offset negative": lambda h: _lqer(h).update(offset=-1),
    "factor offset huge": lambda h: _lqer(h).update(offset=2**62),
    "scale offset overlaps": lambda h: _lqer(h).update(scale_offset=0),
    "factor levels overrun": lambda h: h["streams"][1].update(count=10),
}


def _hostile(case: str) -> bytes:
    h, body = split(golden_bytes())
    HOSTILE[case](h)
    return rebuild(h, body)


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_lqer_entry_refused(case: str) -> None:
    with pytest.raises(GolfpackError, match="invalid QGv3 artifact"):
        decode_qgv3(_hostile(case))


def test_hostile_lqer_entries_refused_by_the_exported_decoder(tmp_path) -> None:
    ns: dict = {}
    exec(compile(decoder_source(), "qg3_decode.py", "exec"), ns)  # noqa: S102 - our own source, as the test of test_decoder does
    ok = tmp_path / "ok.qg3"
    ok.write_bytes(golden_bytes())
    assert torch.equal(ns["load"](str(ok))["w"], decode_qgv3(golden_bytes()).state_dict()["w"])
    for case in HOSTILE:
        p = tmp_path / "bad.qg3"
        p.write_bytes(_hostile(case))
        with pytest.raises(ValueError):
            ns["load"](str(p))
