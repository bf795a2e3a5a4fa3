"""QGv3 planner and serializer: the plan is explicit and complete, and the serializer writes exactly it."""

from __future__ import annotations

import dataclasses
import json
import zlib

import numpy as np
import pytest
import torch

from golfpack.errors import UsageError
from golfpack.formats import qgv3_plan, qgv3_write
from golfpack.formats.codecs import LzmaEncoder
from golfpack.formats.qgv3 import PREAMBLE, decode_qgv3, encode_qgv3
from golfpack.formats.qgv3_constants import Codec, Layout, StreamKind
from golfpack.formats.qgv3_streams import collect
from golfpack.formats.qgv3_write import QGv3Plan, StreamPlan, serialize_qgv3
from golfpack.formats.spec import TensorSpec
from golfpack.packer.quantize import quantize_tensor


def records(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [
        quantize_tensor("w", torch.randn(64, 96, generator=g), TensorSpec.parse("int6")),
        quantize_tensor("v", torch.randn(40, generator=g), TensorSpec.parse("int4:absmax")),
        quantize_tensor("b", torch.randn(33, generator=g), TensorSpec.parse("fp16")),
    ]


def header_of(data: bytes) -> tuple[int, dict]:
    _, _, hcodec, _, hstored, hraw, _ = PREAMBLE.unpack_from(data)
    from golfpack.formats.codecs import decompress

    return hcodec, json.loads(decompress(hcodec, data[24 : 24 + hstored], hraw))


@pytest.mark.parametrize("blocks", ["separate", "solid", "auto"])
@pytest.mark.parametrize("codec", ["lzma", "zlib", "raw"])
def test_plan_alone_reproduces_encode(codec: str, blocks: str) -> None:
    """The plan holds every choice: serializing it afresh (no measured blocks handed over) gives encode's bytes."""
    recs = records()
    contents = collect(recs, config={"d": 1}, policy=None, meta={"m": 2})
    m = qgv3_plan.plan_qgv3(contents, codec=codec, blocks=blocks)
    fresh = serialize_qgv3(contents, m.plan)
    assert fresh == serialize_qgv3(contents, m.plan, stored_blocks=m.stored_blocks)
    assert fresh == encode_qgv3(recs, config={"d": 1}, policy=None, codec=codec, meta={"m": 2}, blocks=blocks)
    assert len(fresh) == m.total_bytes
    assert m.plan.solid == (blocks == "solid") or blocks == "auto"
    if m.plan.solid_codec == Codec.LZMA:
        assert m.plan.solid_props is not None  # explicit, not "whatever compress picks"
    for sp in m.plan.streams:
        assert (sp.lzma_props is not None) == (sp.codec == Codec.LZMA) and sp.alone is not None


def test_hand_written_plan_is_written_as_given(monkeypatch) -> None:
    """A plan chosen by hand (not the smallest) is obeyed, and the serializer measures nothing."""
    recs = records(1)
    contents = collect(recs)
    kinds = [(s.kind, s.bits, s.dtype) for s in contents.streams]
    assert kinds == [(StreamKind.LEVELS, 4, None), (StreamKind.LEVELS, 6, None), (StreamKind.SCALES, None, "float16"),
                     (StreamKind.SCALES, None, "float32"), (StreamKind.PASSTHROUGH, None, "float16")]
    plan = QGv3Plan((
        StreamPlan(StreamKind.LEVELS, 4, None, Layout.BYTE, Codec.ZLIB),
        StreamPlan(StreamKind.LEVELS, 6, None, Layout.DENSE, Codec.RAW),
        StreamPlan(StreamKind.SCALES, None, "float16", Layout.SHUFFLE, Codec.LZMA, (0, 1, 1)),
        StreamPlan(StreamKind.SCALES, None, "float32", Layout.PLAIN, Codec.RAW),
        StreamPlan(StreamKind.PASSTHROUGH, None, "float16", Layout.PLAIN, Codec.ZLIB),
    ), header_codec=Codec.ZLIB)
    calls = []
    monkeypatch.setattr(qgv3_plan, "choose_stream", lambda *a: calls.append(a))  # planner entry points must not be reached
    monkeypatch.setattr(qgv3_plan, "plan_qgv3", lambda *a, **k: calls.append(a))
    data = serialize_qgv3(contents, plan)
    assert not calls
    hcodec, h = header_of(data)
    assert hcodec == Codec.ZLIB
    assert [(s["layout"], h["blocks"][s["block"]]["codec"]) for s in h["streams"]] == [(3, 1), (2, 0), (1, 2), (0, 0), (0, 1)]
    body = data[PREAMBLE.size + PREAMBLE.unpack_from(data)[4] :]
    assert body[len(body) - sum(b["stored"] for b in h["blocks"]) :] == body  # blocks tile the rest
    third = h["blocks"][2]
    at = sum(b["stored"] for b in h["blocks"][:2])
    assert body[at] == 0 + 9 * (1 + 5 * 1)  # the lzma props byte the plan named
    assert zlib.crc32(body[at : at + third["stored"]]) == third["crc"]
    art = decode_qgv3(data)
    assert art.check_digests() == []
    assert [s["layout"] for s in art.streams] == ["byte", "dense", "shuffle", "plain", "plain"]

    solid = dataclasses.replace(plan, solid_codec=Codec.ZLIB, header_codec=Codec.RAW)
    hcodec, h = header_of(serialize_qgv3(contents, solid))
    assert hcodec == 0 and len(h["blocks"]) == 1 and h["blocks"][0]["codec"] == 1
    assert [s["at"] for s in h["streams"]] == [0, 40, 40 + (64 * 96 * 6 + 7) // 8, 40 + 4608 + 128, 40 + 4608 + 128 + 4]
    assert all("alone" not in s for s in h["streams"])  # none measured, none written


def test_plan_must_fit_the_contents() -> None:
    contents = collect(records())
    plan = qgv3_plan.plan_qgv3(contents, codec="raw", blocks="separate").plan
    with pytest.raises(UsageError, match="plan has 4 streams, the contents 5") as e:
        serialize_qgv3(contents, dataclasses.replace(plan, streams=plan.streams[:4]))
    assert e.value.param == "plan"
    swapped = (plan.streams[1], plan.streams[0], *plan.streams[2:])
    with pytest.raises(UsageError, match="plan stream 0 is levels 6, the contents' levels 4"):
        serialize_qgv3(contents, dataclasses.replace(plan, streams=swapped))
    with pytest.raises(UsageError, match="2 stored blocks given, the plan has 5"):
        serialize_qgv3(contents, plan, stored_blocks=[b"", b""])


def test_plan_entries_validate_themselves() -> None:
    with pytest.raises(UsageError, match="layout shuffle is not one of dense, byte for a levels stream") as e:
        StreamPlan(StreamKind.LEVELS, 6, None, Layout.SHUFFLE, Codec.RAW)
    assert e.value.param == "layout"
    with pytest.raises(UsageError, match="lzma_props apply to the lzma codec only"):
        StreamPlan(StreamKind.SCALES, None, "float16", Layout.PLAIN, Codec.ZLIB, (0, 0, 0))
    with pytest.raises(UsageError, match="lzma_encoder applies to the lzma codec only"):
        StreamPlan(StreamKind.SCALES, None, "float16", Layout.PLAIN, Codec.ZLIB, None, LzmaEncoder.LITERAL)
    with pytest.raises(UsageError, match="solid_props"):
        QGv3Plan((), solid_codec=Codec.ZLIB, solid_props=(0, 0, 0))
    with pytest.raises(UsageError, match="solid_encoder"):
        QGv3Plan((), solid_codec=Codec.ZLIB, solid_encoder=LzmaEncoder.LITERAL)
    with pytest.raises(UsageError, match="header_props"):
        QGv3Plan((), header_codec=Codec.RAW, header_props=(3, 0, 2))


def test_planner_arguments_are_usage_errors() -> None:
    contents = collect(records())
    with pytest.raises(UsageError, match="blocks must be 'auto', 'separate' or 'solid', got 'both'") as e:
        qgv3_plan.plan_qgv3(contents, blocks="both")
    assert e.value.param == "blocks"
    with pytest.raises(UsageError, match="unknown codec 'lz4'") as e:
        qgv3_plan.plan_qgv3(contents, codec="lz4")
    assert e.value.param == "codec"
    with pytest.raises(UsageError, match="codec must be a name"):
        qgv3_plan.plan_qgv3(contents, codec=2)  # type: ignore[arg-type]


def test_no_records_make_an_empty_file() -> None:
    art = decode_qgv3(encode_qgv3([], codec="lzma"))
    assert art.records == [] and art.streams == [] and art.blocks == [] and art.total_bytes == art.header_bytes


def test_bad_records_are_usage_errors_naming_records() -> None:
    r = records()[0]
    bad = dataclasses.replace(r, q=np.full(r.q.shape, 40, np.int8))
    with pytest.raises(UsageError, match="w: int6 levels outside") as e:
        encode_qgv3([bad], codec="raw")
    assert e.value.param == "records"
    with pytest.raises(UsageError, match="meta must be a dict or None") as e:
        encode_qgv3([r], codec="raw", meta=[1])  # type: ignore[arg-type]
    assert e.value.param == "meta"


def test_choices_come_from_measuring() -> None:
    """The planner keeps the smallest candidate: its stream really is smaller than the other layout under its codec."""
    contents = collect(records(2))
    m = qgv3_plan.plan_qgv3(contents, codec="lzma", blocks="separate")
    for s, sp, z in zip(contents.streams, m.plan.streams, m.stored_blocks):
        assert len(z) == sp.alone
        for lay in s.layouts():
            for props in ((3, 0, 2), (0, 0, 0), (4, 0, 0)):
                for enc in LzmaEncoder:
                    assert len(qgv3_write.compress_with(Codec.LZMA, s.laid_out(lay), props, enc)) >= len(z)


def test_big_level_streams_take_the_literal_encoder_and_get_smaller() -> None:
    """A sampled (> TRIAL_BYTES) int6 levels stream of trained-like rows: the planner measures both lzma
    encoders on the sample and writes the stream with LITERAL, smaller than EXTREME would make it."""
    g = torch.Generator().manual_seed(0)
    w = torch.distributions.StudentT(5.0).sample((1100, 1024)) * torch.rand(1100, 1, generator=g).add(0.5)
    rec = quantize_tensor("w", w, TensorSpec.parse("int6"))
    contents = collect([rec])
    lv = next(s for s in contents.streams if s.kind == StreamKind.LEVELS)
    assert lv.values().size * lv.itemsize > qgv3_plan.TRIAL_BYTES
    m = qgv3_plan.plan_qgv3(contents, codec="lzma", blocks="separate")
    i = contents.streams.index(lv)
    sp = m.plan.streams[i]
    assert sp.codec == Codec.LZMA and sp.lzma_encoder == LzmaEncoder.LITERAL
    ext = qgv3_write.compress_with(Codec.LZMA, lv.laid_out(sp.layout), sp.lzma_props, LzmaEncoder.EXTREME)
    assert len(m.stored_blocks[i]) < len(ext)
    assert np.array_equal(decode_qgv3(serialize_qgv3(contents, m.plan)).records[0].q, rec.q)


# ----------------------------------------------------------------------------------------------
# parallel, memoized compressions: the same plan and bytes as one compression at a time


def real_contents(n: int = 3):
    """Contents of the first `n` matrices of a real checkpoint (int6 rows, fp16 rest)."""
    from golfpack.formats.checkpoint import load_state_dict
    from tests.conftest import shared_file

    sd = load_state_dict(shared_file("checkpoints/nolanvild_final_model.pt"))
    mats = [(k, t) for k, t in sd.items() if t.ndim == 2][:n]
    recs = [quantize_tensor(k, t, TensorSpec.parse("int6")) for k, t in mats]
    recs += [quantize_tensor(k, t, TensorSpec.parse("fp16")) for k, t in list(sd.items()) if t.ndim == 1][:4]
    return collect(recs, config={"d": 1}, policy=None, meta=None)


@pytest.mark.parametrize("codec", ["lzma", "best"])
def test_parallel_plan_equals_serial_plan_on_a_real_checkpoint(monkeypatch, codec: str) -> None:
    monkeypatch.setattr(qgv3_plan, "TRIAL_BYTES", 1 << 15)  # sampled streams, as at full size, in a second
    contents = real_contents(2)
    assert any(s.values().size > (1 << 15) for s in contents.streams)
    with qgv3_plan.compressions(1):
        serial = qgv3_plan.plan_qgv3(contents, codec=codec)
    with qgv3_plan.compressions(2):
        par = qgv3_plan.plan_qgv3(contents, codec=codec)
    assert par.plan == serial.plan and par.stored_blocks == serial.stored_blocks
    assert serialize_qgv3(contents, par.plan) == serialize_qgv3(contents, serial.plan)


def test_compressions_compress_each_distinct_input_once(monkeypatch) -> None:
    calls: list[tuple[int, int]] = []
    real = qgv3_plan.compress_with
    monkeypatch.setattr(qgv3_plan, "compress_with", lambda c, d, p, e, **k: calls.append((int(c), len(d))) or real(c, d, p, e))
    comp = qgv3_plan.Compressions(2)
    try:
        futs = [comp.submit(Codec.ZLIB, b"abc" * 1000, None) for _ in range(5)] + [comp.submit(Codec.ZLIB, b"abd" * 1000, None)]
        assert [f.result() for f in futs[:5]] == [qgv3_write.compress_with(Codec.ZLIB, b"abc" * 1000, None)] * 5
        assert futs[5].result() == qgv3_write.compress_with(Codec.ZLIB, b"abd" * 1000, None)
    finally:
        comp.close()
    assert sorted(calls) == [(int(Codec.ZLIB), 3000)] * 2
    with pytest.raises(UsageError, match="workers"):
        qgv3_plan.Compressions(0)


def test_compressions_hand_errors_to_the_waiter(monkeypatch) -> None:
    def boom(c, d, p, *a, **k):
        raise RuntimeError("codec failed")

    monkeypatch.setattr(qgv3_plan, "compress_with", boom)
    with qgv3_plan.compressions(2) as comp:
        with pytest.raises(RuntimeError, match="codec failed"):
            comp.submit(Codec.LZMA, b"x" * 100, (0, 0, 0)).result()


def test_compressions_progress_counts_the_work_to_its_end() -> None:
    """The bar's total grows with every new job (weighted by codec cost) and ends where its count does."""
    comp = qgv3_plan.Compressions(2, progress=True)
    try:
        a = comp.submit(Codec.LZMA, b"ab" * 3000, (0, 0, 0))
        b = comp.submit(Codec.ZLIB, b"cd" * 3000, None)
        comp.submit(Codec.LZMA, b"ab" * 3000, (0, 0, 0))  # memo hit: no new work
        a.result(), b.result()
    finally:
        comp.close()
    assert comp._bar.total == pytest.approx(6000 * 1.0 + 6000 * 0.1) and comp._bar.n == pytest.approx(comp._bar.total)


def test_compressions_on_error_drop_queued_work(monkeypatch) -> None:
    """An error inside `compressions()` returns at once: jobs not yet started are dropped, not run."""
    import threading

    release, ran = threading.Event(), []
    real = qgv3_plan.compress_with

    def slow(c, d, p, **k):
        ran.append(len(d))
        release.wait(5)
        return real(c, d, p)

    monkeypatch.setattr(qgv3_plan, "compress_with", slow)
    with pytest.raises(KeyError):
        with qgv3_plan.compressions(2) as comp:
            for n in range(1, 7):
                comp.submit(Codec.ZLIB, b"x" * n, None)
            raise KeyError("stop")
    release.set()
    assert len(ran) <= 2  # the two that had started


def test_second_sample_is_disjoint_from_the_first_and_as_big():
    from golfpack.formats.qgv3_plan import TRIAL_BYTES, _sample, _second_sample

    vals = np.arange(3 * TRIAL_BYTES, dtype=np.int64)
    a, b = _sample(vals, 1), _second_sample(vals, 1)
    assert b is not None and b.size == a.size and not set(a.tolist()) & set(b.tolist())
    assert _second_sample(vals[: 2 * TRIAL_BYTES], 1) is None  # too small for two: the caller encodes in full


def _levels_stream(vals):
    from golfpack.formats.qgv3_constants import StreamKind
    from golfpack.formats.qgv3_streams import Contents, Stream

    st = Stream(StreamKind.LEVELS, 6, None)
    st.add("w", vals.astype(np.int8))
    return Contents(base={}, streams=[st])


def test_confirms_loss_needs_two_samples_to_agree(monkeypatch):
    """`--codec best` skips a whole-file codec's full encode only when a second, disjoint sample confirms that it
    loses every stream it lost on the first: i.i.d. int6-like levels (rans wins both samples) say yes; a stream whose
    first sample is i.i.d. but whose rest repeats (brotli wins there) says no."""
    from golfpack.formats.qgv3_plan import _TRIAL_SLICES, confirms_loss, estimate_streams

    monkeypatch.setattr(qgv3_plan, "TRIAL_BYTES", 1 << 16)  # the same rule on small samples (the real 1 MiB costs a minute)
    TRIAL_BYTES = qgv3_plan.TRIAL_BYTES
    rng = np.random.default_rng(0)
    n = 3 * TRIAL_BYTES
    iid = np.clip(np.round(rng.normal(0, 6, n)), -31, 31)
    assert confirms_loss(_levels_stream(iid), "brotli") and confirms_loss(_levels_stream(iid), "lzma")
    per = TRIAL_BYTES // _TRIAL_SLICES // 8 * 8
    tricky = np.tile(iid[:4096], n // 4096 + 1)[:n]  # repeats: LZ codecs win by far
    for a in np.linspace(0, n - per, _TRIAL_SLICES).astype(np.int64) // 8 * 8:
        tricky[a : a + per] = iid[a : a + per]  # ... but the first sample sees i.i.d. levels only
    est, _ = estimate_streams(_levels_stream(tricky))
    assert est["rans"] < est["brotli"]  # the first sample is misled
    assert not confirms_loss(_levels_stream(tricky), "brotli")


def test_lzma_variants_skip_extreme_only_on_narrow_levels_in_a_codec_set() -> None:
    """In a codec set (prune: rans is tried too), levels under 8 bits get LITERAL lzma only (bench/lzma_levels.py:
    rans beat every lzma variant on each); int8 levels, scales and lzma alone keep EXTREME (it won there)."""
    from golfpack.formats.qgv3_plan import _variants

    def encoders(kind, bits, itemsize=1, prune=True):
        return {e for _, e in _variants(Codec.LZMA, kind, Layout.BYTE if bits else Layout.PLAIN, itemsize, bits, prune)}

    for b in (2, 4, 5, 6, 7):
        assert encoders(StreamKind.LEVELS, b) == {LzmaEncoder.LITERAL}
        assert encoders(StreamKind.LEVELS, b, prune=False) == set(LzmaEncoder)
    assert encoders(StreamKind.LEVELS, 8) == set(LzmaEncoder)
    assert encoders(StreamKind.SCALES, None, 2) == set(LzmaEncoder)
    assert _variants(Codec.RANS, StreamKind.LEVELS, Layout.BYTE, 1, 6, True) == [(None, LzmaEncoder.EXTREME)]  # not lzma: one trial


def test_a_codec_set_without_rans_keeps_extreme_on_narrow_levels() -> None:
    """The LITERAL-only rule leans on rans being tried beside lzma: a set without it (lzma+zstd) keeps both encoders."""
    from golfpack.formats.qgv3_plan import Compressions, _trials

    lv = next(s for s in collect(records()).streams if s.kind == StreamKind.LEVELS and s.bits == 6)
    comp = Compressions(workers=1)
    enc = lambda codecs: {t[4] for t in _trials(lv, codecs, comp, prune=True)[2] if t[1] == Codec.LZMA}  # noqa: E731
    assert enc([Codec.LZMA, Codec.RANS]) == {LzmaEncoder.LITERAL}
    assert enc([Codec.LZMA, Codec.ZSTD]) == set(LzmaEncoder)
    comp.close()
