"""`+out<k>` in the packer (quantize_tensor): which weights are kept, what they are stored as, how the weight error
falls, how GPTQ keeps them inside its loop, and a bit-exact round trip through the exported decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from golfpack.formats.qgv3 import encode_qgv3, tensor_digest
from golfpack.formats.qgv3_constants import outlier_count
from golfpack.formats.spec import TensorSpec
from golfpack.packer.decoder import export_decoder
from golfpack.packer.quantize import fake_quantize, gptq_quantize, gptq_with_outliers, quantize_tensor, select_outliers
from tests.formats.test_hostile import decoder  # noqa: F401 (fixture: the decoder source, loaded in-process)
from tests.formats.test_qgv3_outliers import outlier_records
from tests.packer.test_decoder import _run


def _w(rows: int = 24, cols: int = 96, seed: int = 0) -> torch.Tensor:
    """fp16-representable weights (so a kept weight's stored value is exact and its error exactly 0), heavy-tailed."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, cols, generator=g) * 0.05 * (1 + 3 * (torch.rand(rows, cols, generator=g) > 0.98))).half().float()


@pytest.mark.parametrize("spec", ["int4:g64+out3", "int3+out10", "int5:g32s6:sd12+out50", "int6:mse+out1"])
def test_kept_weights_are_the_largest_errors_and_the_error_falls_by_exactly_theirs(spec: str) -> None:
    w = _w()
    s = TensorSpec.parse(spec)
    base = quantize_tensor("w", w, TensorSpec.parse(spec.split("+out")[0]))
    r = quantize_tensor("w", w, s)
    assert np.array_equal(r.q, base.q) and np.array_equal(r.scales, base.scales)  # chosen after rounding: same grid
    err = (w - base.dequantize()).reshape(-1).abs()
    n = outlier_count(w.numel(), s.outliers)
    assert r.outlier_idx.size == n == -(-w.numel() * s.outliers // 1000)
    assert np.all(np.diff(r.outlier_idx) > 0)
    kept = torch.from_numpy(r.outlier_idx)
    others = torch.ones(w.numel(), dtype=torch.bool)
    others[kept] = False
    assert float(err[kept].min()) >= float(err[others].max())  # the k kept are the k largest
    assert r.outlier_vals.dtype == np.float16 and np.array_equal(r.outlier_vals, w.reshape(-1)[kept].half().numpy())
    d_base, d = (w - base.dequantize()).reshape(-1), (w - r.dequantize()).reshape(-1)
    assert torch.equal(d[others], d_base[others]) and torch.all(d[kept] == 0)
    d_base, d = d_base.double(), d.double()
    assert float((d_base**2).sum() - (d**2).sum()) == pytest.approx(float((d_base[kept] ** 2).sum()), rel=1e-9)


def test_ties_keep_the_lower_index_and_a_vector_gets_outliers_too() -> None:
    err_w = torch.zeros(10)
    deq = torch.zeros(10)
    err_w[[2, 5, 7]] = 1.0  # three equal errors, two kept (ceil(10 * 200 / 1000) would be 2 at k = 200; here rate 150)
    idx, vals = select_outliers(err_w, deq, 150)
    assert idx.tolist() == [2, 5] and vals.tolist() == [1.0, 1.0]
    r = quantize_tensor("v", torch.linspace(-1, 1, 40), TensorSpec.parse("int3+out50"))
    assert r.outlier_idx.size == 2 and r.dequantize().shape == (40,)


def test_gptq_keeps_outliers_inside_its_loop() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 96, generator=g) @ torch.randn(96, 96, generator=g)
    H = x.T @ x / 400
    w = _w(seed=2)
    q0, s0 = gptq_quantize(w, H, 4, clip="absmax", group=64)
    q, s, idx, vals = gptq_with_outliers(w, H, 4, 10, clip="absmax", group=64)
    r = quantize_tensor("w", w, TensorSpec.parse("int4:g64+gptq+out10"), H)
    assert np.array_equal(r.q, q.numpy()) and np.array_equal(r.outlier_idx, idx) and np.array_equal(r.outlier_vals, vals)
    plain = quantize_tensor("w", w, TensorSpec.parse("int4:g64+gptq"), H)
    assert np.array_equal(plain.q, q0.numpy()) and not np.array_equal(plain.q, r.q)  # the kept weights' error is not pushed on

    def out_err(rec) -> float:
        d = (rec.dequantize() - w).double()
        return float(torch.einsum("ij,jk,ik->", d, H.double(), d))

    assert out_err(r) < 0.97 * out_err(plain)  # measured: ~0.92x
    assert idx.size == outlier_count(w.numel(), 10)
    assert torch.equal(fake_quantize(w, r.spec, H), r.dequantize())


def test_payload_grows_by_six_bytes_an_outlier() -> None:
    w = _w()
    a = quantize_tensor("w", w, TensorSpec.parse("int4:g64"))
    b = quantize_tensor("w", w, TensorSpec.parse("int4:g64+out3"))
    assert b.payload_bytes() - a.payload_bytes() == 6 * outlier_count(w.numel(), 3)


def test_qat_rounding_drops_outliers() -> None:
    assert TensorSpec.parse("int4:g64+gptq+out3").rounded() == TensorSpec.parse("int4:g64")


def _decoder_records() -> list:
    return [*outlier_records(), quantize_tensor("gq", _w(16, 64), TensorSpec.parse("int4:g32+gptq+out20"), torch.eye(64) + 0.1)]


def test_decoder_source_rebuilds_outliers_exactly(decoder, tmp_path) -> None:  # noqa: F811 (in-process: fast)
    records = _decoder_records()
    p = tmp_path / "m.qg3"
    p.write_bytes(encode_qgv3(records, codec="lzma"))
    sd = decoder.load(str(p))
    for r in records:
        assert sd[r.name].dtype == r.dequantize().dtype and torch.equal(sd[r.name], r.dequantize()), r.name


@pytest.mark.slow
def test_exported_decoder_loads_outliers_exactly(tmp_path) -> None:
    """The exported file, isolated (no golfpack importable), in a subprocess (~9 s: a fresh torch import)."""
    records = _decoder_records()
    want = {r.name: [str(r.dequantize().dtype), list(r.shape), tensor_digest(r.dequantize())] for r in records}
    dec = tmp_path / "qg3_decode.py"
    export_decoder(dec)
    paths = []
    for codec, blocks in (("lzma", "separate"), ("zlib", "solid")):
        p = tmp_path / f"m_{blocks}.qg3"
        p.write_bytes(encode_qgv3(records, codec=codec, blocks=blocks))
        paths.append(p)
    got = _run(dec, paths, tmp_path)
    for p in paths:
        assert got[str(p)] == want, p.name


def test_describe_artifact_shows_outlier_bytes(tmp_path) -> None:
    from golfpack.packer.pack import describe_artifact

    w = _w()
    recs = [quantize_tensor("a", w, TensorSpec.parse("int4:g64+out10")), quantize_tensor("b", w[:8], TensorSpec.parse("int4:g64+out30")),
            quantize_tensor("c", w, TensorSpec.parse("int4:g64"))]
    p = tmp_path / "m.qg3"
    p.write_bytes(encode_qgv3(recs, codec="lzma", blocks="separate"))
    rows = {r["name"]: r for r in describe_artifact(p)["tensors"]}
    assert (rows["a"]["outliers"], rows["b"]["outliers"]) == (24, 24) and "outliers" not in rows["c"]
    assert rows["a"]["outlier_raw_bytes"] == 6 * 24
    from golfpack.formats.qgv3 import read_qgv3

    stored = sum(s["stored_bytes"] for s in read_qgv3(p).streams if s["kind"] == "outliers")
    assert rows["a"]["outlier_stored_bytes"] + rows["b"]["outlier_stored_bytes"] == pytest.approx(stored)
