"""QGv3 planner: measure the candidates and return an explicit QGv3Plan (the serializer then just writes it).

Per stream it tries every layout the stream may take, every codec asked for and, for lzma, a few
(lc, lp, pb) settings and both encoder match searches (`LzmaEncoder`), on the whole stream up to
TRIAL_BYTES (else on an evenly spaced sample of that size), and keeps the smallest. Then it compares a file of separate blocks with one solid block (when
both are allowed) and keeps the smaller; the header's codec is the smallest of raw and the codecs used.

Speed without changing a byte: every compression goes through `Compressions`, a thread pool (lzma,
zlib, zstd and brotli release the GIL) that compresses each distinct (codec, props, bytes) once, so
plans that share a stream (`pack --codec best` plans once per codec, and once per stream) share its
compressed bytes, and the streams are measured side by side. Choices are read back in the serial
order with the same strict `<`, so the plan is the one a serial planner makes.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import heapq
import math
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from typing import TypeVar

import numpy as np

from golfpack._progress import bar as progress_bar
from golfpack.errors import UsageError
from golfpack.formats.codecs import CODECS, LZMA_PROPS_CANDIDATES, LzmaEncoder, available_codecs, codec_id, compress
from golfpack.formats.qgv3_constants import PREAMBLE, Codec, Layout, StreamKind
from golfpack.formats.qgv3_streams import Contents, Stream, layout_bytes
from golfpack.formats.qgv3_write import LzmaProps, QGv3Plan, StreamPlan, compress_with, header_json, props_of

TRIAL_BYTES = 1 << 20  # layout/props/codec choices are measured on the whole stream up to this size, else on a sample this big
_TRIAL_SLICES = 8  # the sample: this many evenly spaced slices (different tensors of the stream)
BLOCK_MODES = ("auto", "separate", "solid")


MAX_WORKERS = 4  # compression threads at most (each lzma extreme trial holds ~0.7 GB of match finder at 64 MiB dicts)
# Relative CPU cost per input byte, to start the longest compressions first (brotli q11 is ~2x lzma extreme).
_COST = {Codec.RAW: 0.0, Codec.ZLIB: 0.1, Codec.LZMA: 1.0, Codec.ZSTD: 1.0, Codec.BROTLI: 2.0, Codec.RANS: 0.1}
_LITERAL_COST = 0.2  # lzma with LzmaEncoder.LITERAL, relative to EXTREME (measured 3-8x faster)


def _cost(codec: Codec, encoder: LzmaEncoder) -> float:
    return _LITERAL_COST if codec == Codec.LZMA and encoder == LzmaEncoder.LITERAL else _COST[codec]


def default_workers() -> int:
    """Compression threads: the CPUs this process may use, at most MAX_WORKERS."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_WORKERS))


class Compressions:
    """Compress on `workers` threads, longest job first, each distinct (codec, props, bytes) once.

    `submit` returns a Future of exactly `compress_with(codec, data, props, encoder)`; with workers=1 it runs
    at once in the caller's thread. Use it through `compressions()` so nested planners share one.
    progress: a bar of the work done and to do (bytes weighted by each codec's relative cost; lzma
    reports as it goes), with its ETA; None draws it on a terminal only."""

    def __init__(self, workers: int | None = None, progress: bool | None = False) -> None:
        self.workers = default_workers() if workers is None else workers
        if self.workers < 1:
            raise UsageError(f"workers must be >= 1, got {self.workers}", param="workers")
        self._bar = progress_bar(total=0, desc="compress", unit="B", unit_scale=True, enabled=progress)
        self._bar_lock = threading.Lock()
        self._memo: dict[tuple[int, LzmaProps | None, int, int, bytes], Future[bytes]] = {}
        self._lock = threading.Lock()
        self._queue: list[tuple[float, int, Callable[[], None]]] = []  # (-cost, seq, job): a heap
        self._ready = threading.Condition(self._lock)
        self._seq = 0
        self._closed = False
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"golfpack-compress-{i}")
                         for i in range(self.workers if self.workers > 1 else 0)]
        for t in self._threads:
            t.start()

    def submit(self, codec: Codec, data: bytes, props: LzmaProps | None,
               encoder: LzmaEncoder = LzmaEncoder.EXTREME) -> Future[bytes]:
        key = (int(codec), props, int(encoder), len(data), hashlib.blake2b(data, digest_size=16).digest())
        with self._lock:
            fut = self._memo.get(key)
            if fut is not None:
                return fut
            fut = self._memo[key] = Future()
            with self._bar_lock:
                self._bar.total += _cost(codec, encoder) * len(data)
                self._bar.refresh()
            if self._threads and codec != Codec.RAW:
                self._seq += 1
                heapq.heappush(self._queue, (-_cost(codec, encoder) * len(data), self._seq,
                                             lambda: self._run(fut, codec, data, props, encoder)))
                self._ready.notify()
                return fut
        self._run(fut, codec, data, props, encoder)
        return fut

    def _done(self, cost: float, n: int) -> None:
        with self._bar_lock:
            self._bar.update(cost * n)

    def _run(self, fut: Future[bytes], codec: Codec, data: bytes, props: LzmaProps | None, encoder: LzmaEncoder) -> None:
        cost = _cost(codec, encoder)
        try:
            fut.set_result(compress_with(codec, data, props, encoder, progress=lambda n: self._done(cost, n)))
        except BaseException as e:  # handed to whoever waits on it
            fut.set_exception(e)

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._queue and not self._closed:
                    self._ready.wait()
                if not self._queue:
                    return
                job = heapq.heappop(self._queue)[2]
            job()

    def close(self, wait: bool = True) -> None:
        """Stop the threads once the queue is done; wait=False (on an error, Ctrl-C) drops what has not
        started and returns at once (a running compression ends with its daemon thread)."""
        with self._lock:
            self._closed = True
            if not wait:
                self._queue.clear()  # their futures never resolve: nobody waits on them after an error
            self._ready.notify_all()
        if wait:
            for t in self._threads:
                t.join()
        self._bar.close()


_ACTIVE: contextvars.ContextVar[Compressions | None] = contextvars.ContextVar("golfpack_compressions", default=None)


@contextlib.contextmanager
def compressions(workers: int | None = None, progress: bool | None = False) -> Iterator[Compressions]:
    """The active `Compressions` (a new one, closed on exit, when none is): every plan inside shares it."""
    cur = _ACTIVE.get()
    if cur is not None:
        yield cur
        return
    comp = Compressions(workers, progress)
    token = _ACTIVE.set(comp)
    try:
        yield comp
    except BaseException:
        _ACTIVE.reset(token)
        comp.close(wait=False)
        raise
    _ACTIVE.reset(token)
    comp.close()


_T = TypeVar("_T")


def run_in_threads(jobs: list[Callable[[], _T]]) -> list[_T]:
    """Run `jobs` on threads that see the caller's context (its active `Compressions`); results in order."""
    if len(jobs) <= 1:
        return [j() for j in jobs]
    with ThreadPoolExecutor(len(jobs), thread_name_prefix="golfpack-plan") as ex:
        futs = [ex.submit(contextvars.copy_context().run, j) for j in jobs]
        return [f.result() for f in futs]


@dataclass(frozen=True)
class Measured:
    """A plan and what measuring it already produced."""

    plan: QGv3Plan  # every choice, explicit
    stored_blocks: tuple[bytes, ...]  # the plan's blocks, compressed (hand them to serialize_qgv3)
    total_bytes: int  # size of the file the plan gives


@dataclass(frozen=True)
class _Choice:
    plan: StreamPlan  # the chosen layout/codec/props (alone = len(stored))
    stored: bytes  # the whole stream compressed with them
    trial: bytes  # the measured sample in the chosen layout (the whole stream when small)
    trial_size: int  # its compressed size with the chosen codec/props
    sampled: bool  # True when choices were measured on a sample, not the whole stream


def resolve_codecs(codec: str) -> list[Codec]:
    """The codecs `codec` names: one ("lzma"), a set chosen from per stream ("lzma+rans"), or every available
    one for "best" (UsageError if unknown, or a set names one twice)."""
    if not isinstance(codec, str):
        raise UsageError(f"codec must be a name, got {codec!r}", param="codec")
    if codec.lower() == "best":
        return [CODECS[c] for c in available_codecs()]
    out = [codec_id(name) for name in codec.split("+")]
    if len(set(out)) != len(out):
        raise UsageError(f"codec set {codec!r} names a codec twice", param="codec")
    for c in out:
        if c.name.lower() not in available_codecs():
            compress(c, b"")  # raises the "install the package" error
    return out


def _sample(values: np.ndarray, itemsize: float) -> np.ndarray:
    """The whole array if small, else `_TRIAL_SLICES` evenly spaced slices totalling ~TRIAL_BYTES."""
    n = values.size
    if n * itemsize <= TRIAL_BYTES:
        return values
    per, starts = _slices(n, itemsize)
    return np.concatenate([values[s : s + per] for s in starts])


def _slices(n: int, itemsize: float) -> tuple[int, np.ndarray]:
    """(slice length, slice starts) of `_sample` for n values: `_second_sample` moves these very slices."""
    per = max(8, int(TRIAL_BYTES / itemsize) // _TRIAL_SLICES // 8 * 8)
    return per, np.linspace(0, n - per, _TRIAL_SLICES).astype(np.int64) // 8 * 8


def _second_sample(values: np.ndarray, itemsize: float) -> np.ndarray | None:
    """A sample the size of `_sample`'s and disjoint from it (each slice moved one slice length on, the last one
    back), or None when the stream is too small to hold two."""
    n = values.size
    if n * itemsize <= 2 * TRIAL_BYTES:
        return None
    per, first = _slices(n, itemsize)
    starts = [int(a) + per for a in first[:-1]] + [int(first[-1]) - per]
    return np.concatenate([values[a : a + per] for a in starts])


def confirms_loss(contents: Contents, codec: str) -> bool:
    """Whether `codec` alone for the whole file is sure to lose to the per-stream choice ("best"): on every stream where
    it is not that choice, either it lost on the whole stream, or it lost on the sample AND loses again on a second,
    disjoint one (`_second_sample`). A stream too small for two samples, or a second sample it wins, says no.
    `--codec best` skips the full encode of a whole-file codec only on a yes (a 36M model's brotli pass is ~100 s)."""
    codecs, c = resolve_codecs("best"), codec_id(codec)
    checks = []
    with compressions() as comp:
        for st, (vals, samp, trials) in zip(contents.streams, run_in_threads([partial(_trials, st, codecs, comp) for st in contents.streams])):
            _, b, lay, props, enc = min(trials, key=lambda t: len(t[0]))
            if b == c or samp.size == vals.size:
                continue  # its own choice, or measured on the whole stream
            again = _second_sample(vals, st.itemsize)
            if again is None:
                return False
            mine = [comp.submit(c, layout_bytes(st.kind, lo, again, st.bits), pr, en)
                    for lo in st.layouts() for pr, en in _variants(c, st.kind, lo, st.itemsize, st.bits)]
            checks.append((mine, comp.submit(b, layout_bytes(st.kind, lay, again, st.bits), props, enc)))
        return all(min(len(f.result()) for f in mine) > len(theirs.result()) for mine, theirs in checks)


_Variant = tuple[LzmaProps | None, LzmaEncoder]


def _variants(codec: Codec, kind: int, layout: int, itemsize: int, bits: int | None = None, prune: bool = False) -> list[_Variant]:
    if codec != Codec.LZMA:
        return [(None, LzmaEncoder.EXTREME)]
    props: list[LzmaProps] = list(LZMA_PROPS_CANDIDATES)
    if kind != StreamKind.LEVELS and layout == Layout.PLAIN and itemsize > 1:
        a = int(math.log2(itemsize))
        props.append((0, min(a, 4), min(a, 4)))  # literal position = byte within the element
    # prune (a codec set with rans in it, e.g. lzma+rans): levels under 8 bits get the LITERAL match search only. rans was smaller
    # than every lzma variant on each such stream of the shared models' presets (bench/results/lzma_levels.json: 13 of
    # 13, by 5-20%), and EXTREME takes about twice LITERAL's time in every one of a search's exact packs; LITERAL stays
    # as the fallback for levels rans cannot model (long repeats). Alone, lzma keeps both: EXTREME was smaller on 7 of 18
    narrow = prune and kind == StreamKind.LEVELS and bits is not None and bits < 8
    encoders = (LzmaEncoder.LITERAL,) if narrow else tuple(LzmaEncoder)
    return [(p, e) for e in encoders for p in props]


def _rans_fits(kind: int, layout: int, bits: int | None) -> bool:
    """Whether rans is worth a trial in a codec set: levels one per byte (BYTE, or int8's DENSE). Bit-packed levels
    and fp16 scales are not order-0 bytes (measured: rans 3-8x lzma on scales), and each trial costs time."""
    return kind in (StreamKind.LEVELS, StreamKind.SUBSCALES) and (layout == Layout.BYTE or bits == 8)


_Trial = tuple[bytes, Codec, int, LzmaProps | None, LzmaEncoder]  # (compressed sample, codec, layout, props, encoder)


def _trials(s: Stream, codecs: list[Codec], comp: Compressions, prune: bool = False) -> tuple[np.ndarray, np.ndarray, list[_Trial]]:
    """(values, measured sample, every trial in the serial order (codec, layout, props, encoder)): all are
    submitted before any is read, so they run side by side. prune: a codec set's plan, which skips rans where
    it cannot win (`_rans_fits`)."""
    vals = s.values()
    samp = _sample(vals, s.itemsize)
    futs = []
    for c in codecs:
        for lay in s.layouts():
            if prune and c == Codec.RANS and not _rans_fits(s.kind, lay, s.bits):
                continue
            data = layout_bytes(s.kind, lay, samp, s.bits)
            for pr, enc in _variants(c, s.kind, lay, s.itemsize, s.bits, prune and Codec.RANS in codecs):
                futs.append((comp.submit(c, data, pr, enc), c, lay, pr, enc))
    return vals, samp, [(f.result(), c, lay, pr, enc) for f, c, lay, pr, enc in futs]


def estimate_streams(contents: Contents) -> tuple[dict[str, float], bool]:
    """({codec name: estimated stored bytes of every stream with that codec alone, "best": with each stream's
    smallest codec}, exact?) over the available codecs, separate blocks, header excluded: a sampled stream's
    smallest trial scaled to its whole size. The trials are `plan_qgv3`'s own (memoized in the active
    `Compressions`, so plans of the same contents reuse them)."""
    codecs = resolve_codecs("best")
    est = dict.fromkeys([c.name.lower() for c in codecs] + ["best"], 0.0)
    exact = True
    with compressions() as comp:
        for vals, samp, trials in run_in_threads([partial(_trials, s, codecs, comp) for s in contents.streams]):
            scale = vals.size / samp.size
            exact = exact and samp.size == vals.size
            for c in codecs:
                est[c.name.lower()] += min(len(t[0]) for t in trials if t[1] == c) * scale
            est["best"] += min(len(t[0]) for t in trials) * scale
    return est, exact


def choose_stream(s: Stream, codecs: list[Codec], comp: Compressions | None = None, prune: bool = False) -> _Choice:
    """Pick (codec, layout, lzma props) for one stream by measuring, then compress it whole.

    Every trial is submitted to `comp` (else the active one, else a new one) before any is read; they
    are then compared in the serial order (codec, layout, props) with a strict `<`, as one at a time."""
    if comp is None:
        with compressions() as comp:
            return choose_stream(s, codecs, comp, prune)
    vals, samp, trials = _trials(s, codecs, comp, prune)
    whole = samp.size == vals.size
    z, codec, layout, props, encoder = min(trials, key=lambda t: len(t[0]))  # the first smallest: a serial strict `<`
    trial = layout_bytes(s.kind, layout, samp, s.bits)
    stored = z if whole else comp.submit(codec, layout_bytes(s.kind, layout, vals, s.bits), props, encoder).result()
    sp = StreamPlan(s.kind, s.bits, s.dtype, Layout(layout), codec, props, encoder, alone=len(stored))
    return _Choice(sp, stored, trial, len(z), not whole)


# Above this many header JSON bytes (tens of thousands of tensors) the header is compressed with zlib only:
# `pack --dry-run` of 100,000 one-element tensors took minutes of lzma extreme on a multi-MB header.
HEADER_FAST_BYTES = 1 << 20


def _with_header(contents: Contents, plan: QGv3Plan, blocks: list[bytes], codecs: list[Codec]) -> Measured:
    """The plan with the header codec that makes the smallest header (raw first, then `codecs` in order)."""
    hraw = header_json(contents, plan, blocks)
    best_c, best = Codec.RAW, hraw
    if len(hraw) > HEADER_FAST_BYTES:  # bound header work: lzma extreme runs at ~1 MB/s, zlib at ~20
        codecs = [Codec.ZLIB]
    for c in codecs:
        if c != Codec.RAW:
            z = compress(c, hraw)
            if len(z) < len(best):
                best_c, best = c, z
    plan = replace(plan, header_codec=best_c, header_props=props_of(best_c, best))
    return Measured(plan, tuple(blocks), PREAMBLE.size + len(best) + sum(len(b) for b in blocks))


def plan_qgv3(contents: Contents, *, codec: str = "lzma", blocks: str = "auto") -> Measured:
    """Measure and return the smallest plan (see module doc). blocks: "auto", "separate" or "solid"."""
    if blocks not in BLOCK_MODES:
        raise UsageError(f"blocks must be 'auto', 'separate' or 'solid', got {blocks!r}", param="blocks")
    codecs = resolve_codecs(codec)
    with compressions() as comp:
        return _plan(contents, codecs, blocks, comp, prune="+" in codec)


def _plan(contents: Contents, codecs: list[Codec], blocks: str, comp: Compressions, prune: bool = False) -> Measured:
    order = contents.streams
    chosen = run_in_threads([partial(choose_stream, s, codecs, comp, prune) for s in order])  # streams side by side

    # separate: one block per stream, each with its own codec
    sep = QGv3Plan(tuple(ch.plan for ch in chosen))
    best = _with_header(contents, sep, [ch.stored for ch in chosen], codecs)
    try_solid = len(order) > 1 and blocks != "separate"
    if not try_solid:
        return best

    biggest = max(chosen, key=lambda ch: len(ch.stored))

    def solid_lzma(c: Codec) -> tuple[LzmaProps | None, LzmaEncoder]:  # lzma: the biggest stream's props and encoder when it is lzma too
        if c == Codec.LZMA and biggest.plan.codec == c:
            return biggest.plan.lzma_props, biggest.plan.lzma_encoder
        return None, LzmaEncoder.EXTREME

    # rans finds no cross-stream matches, so a solid rans block cannot beat its separate streams; and when rans
    # won the biggest stream, a solid block of another codec would code that stream worse (3-8% for lzma on
    # levels), far more than cross-stream matches give back: neither is tried
    solid_codecs = [c for c in dict.fromkeys(ch.plan.codec for ch in chosen) if c != Codec.RANS or len(codecs) == 1]
    if not solid_codecs or (biggest.plan.codec == Codec.RANS and len(codecs) > 1):
        return best
    if blocks == "auto" and any(ch.sampled for ch in chosen):
        # big streams: compress them solid in full only if it wins on the measured samples
        joined_trial = b"".join(ch.trial for ch in chosen)
        tries = [comp.submit(c, joined_trial, *solid_lzma(c)) for c in solid_codecs]
        if min(len(f.result()) for f in tries) >= sum(ch.trial_size for ch in chosen):
            return best
    # solid: all streams in one block (cross-stream matches; one codec)
    joined = b"".join(s.laid_out(ch.plan.layout) for s, ch in zip(order, chosen))
    futs = [(c, comp.submit(c, joined, *solid_lzma(c))) for c in solid_codecs]
    c, z = min(((c, f.result()) for c, f in futs), key=lambda t: len(t[1]))
    solid_plan = QGv3Plan(tuple(ch.plan for ch in chosen), solid_codec=c, solid_props=props_of(c, z),
                          solid_encoder=solid_lzma(c)[1])
    solid = _with_header(contents, solid_plan, [z], codecs)
    if solid.total_bytes < best.total_bytes or blocks == "solid":
        best = solid
    return best


__all__ = ["BLOCK_MODES", "Compressions", "Measured", "TRIAL_BYTES", "choose_stream", "compressions", "confirms_loss", "estimate_streams",
           "plan_qgv3",
           "resolve_codecs", "run_in_threads"]
