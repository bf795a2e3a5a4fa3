"""Calibration tokens: where they come from, the fixed batches cut from them, and the record that pins them.

Calibration tokens must never be the validation tokens that get reported: `calib_tokens` reads a
train-shard glob or tokenizes Python's own documentation (`pydoc`), never val (a file NAMED like val
data is refused); `self_tokens` samples the model's own text (the search's default, written to a shard
so a replay reads the same tokens).

The tokens are split in two (`calib_halves`): the first half is MEASURED on (per-tensor sensitivity,
GPTQ Hessians), the second is held out to judge whole layouts, so the selection never scores a layout
on the tokens its parts were fitted on. `GptqCalibration` names the first-half batch a `+gptq` policy
was fitted on, and `calibration_batch` rebuilds it (digest-checked) when `pack` replays the policy.

This sits in the packer (not the search) because `pack` needs it for `+gptq` specs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from golfpack.errors import DataError, FormatError, UsageError
from golfpack.formats.policy_schema import CALIBRATION_KEYS

CALIB_MAX_TOKENS = 1 << 20  # calibration reads at most this many tokens (a glob may match GBs of train shards)
DEFAULT_GPTQ_BATCH = 32  # calibration sequences for the Hessians
DEFAULT_GPTQ_SEQ = 256  # tokens per sequence
# a file named like validation data: fineweb_val_000000.bin, val_*.bin, x.val.bin, validation-*.bin
# (a bare substring test would also refuse 'interval_train.bin' or 'eval_run.calib.bin')
_VAL_NAME = re.compile(r"(^|[_\-.])val(id|idation)?([_\-.\d*?]|$)")


# ------------------------------------------------------------------------------------------------
# token sources


def pydoc_tokens(tokenizer: str) -> np.ndarray:
    """Python's documentation topics (English prose shipped with Python), tokenized with `tokenizer`.

    Each page is one document, prefixed with the tokenizer's BOS id (as the challenge's shards are).
    """
    from golfpack._pydoc_text import pydoc_documents
    from golfpack.tokenizer import load_sentencepiece

    sp = load_sentencepiece(tokenizer)
    bos = sp.bos_id()
    out: list[int] = []
    for text in pydoc_documents():
        if bos >= 0:
            out.append(bos)
        out.extend(sp.encode(text))
    return np.asarray(out, dtype=np.int64)


GEN_CACHE_BYTES = 1 << 30  # self-calibration: KV-cache memory one generate call may use (sets how many sequences share it)


def generation_chunk(model: torch.nn.Module, sequences: int, length: int) -> int:
    """How many sequences one `generate` call samples together: all of them when their KV cache fits in
    GEN_CACHE_BYTES (each step then reads the weights once for every sequence instead of once per 16 - the
    step is memory-bound on the weights at small batch). From the architecture only, never from free memory,
    so the same model samples the same text on every machine. A model without a baseline config: 16."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(cfg, "num_kv_heads"):
        return min(sequences, 16)
    per_seq = 2 * 4 * (length + 1) * cfg.num_kv_heads * cfg.head_dim * cfg.num_layers  # k and v, fp32
    return max(1, min(sequences, GEN_CACHE_BYTES // per_seq))


def self_tokens(model: torch.nn.Module, *, sequences: int, length: int, seed: int = 0, bos: int = 1,
                device: str = "cpu", chunk: int | None = None, progress: bool | None = False) -> np.ndarray:
    """The model's own text: `sequences` samples of `length` tokens, each after a BOS, as one stream
    (BOS-separated like documents in a shard). In-distribution calibration with no data at all - and
    never the validation tokens. Sampled at temperature 1 with a seeded generator, through the model's
    `generate`, `chunk` sequences per call (default `generation_chunk`: all that fit); on CUDA under bf16
    autocast (`model.autocast`). The baseline family keeps a KV cache; a user's model (no cache) recomputes
    every prefix, which the progress line says."""
    from golfpack._progress import bar as progress_bar
    from golfpack.model import GPT, autocast

    chunk = generation_chunk(model, sequences, length) if chunk is None else chunk
    gen = torch.Generator(device=device).manual_seed(seed)
    cached = getattr(model, "kv_cache", True)
    desc = "self-calib" if cached else "self-calib (no KV cache: recomputing each prefix)"
    bar = progress_bar(total=sequences * length, desc=desc, unit="tok", enabled=progress, unit_scale=True)
    rows = []
    try:
        with torch.inference_mode(), autocast(device):
            for i in range(0, sequences, chunk):
                n = min(chunk, sequences - i)
                prefix = torch.full((n, 1), bos, dtype=torch.long, device=device)
                kw = {"on_step": lambda n=n: bar.update(n)} if isinstance(model, GPT) else {}
                rows.append(model.generate(prefix, length, generator=gen, **kw).cpu())  # type: ignore[operator]
                if not kw:
                    bar.update(n * length)
    finally:
        bar.close()
    return torch.cat(rows).reshape(-1).numpy().astype(np.int64)


def calib_tokens(source: str, *, tokenizer: str | None = None, max_tokens: int | None = CALIB_MAX_TOKENS) -> np.ndarray:
    """'pydoc' (needs tokenizer) or a shard glob of NON-validation tokens (the first `max_tokens`)."""
    if source == "pydoc":
        if not tokenizer:
            raise UsageError("calibration source 'pydoc' needs tokenizer (the sentencepiece .model of the checkpoint)", param="tokenizer")
        toks = pydoc_tokens(tokenizer)
    else:
        name = source.rsplit("/", 1)[-1].lower()
        # OUT.calib.bin is the search's own file of model samples (calib 'self'): never val, whatever OUT is
        if _VAL_NAME.search(name) and not name.endswith(".calib.bin"):
            raise DataError(
                f"calibration source {source!r} looks like validation data; calibrate on train shards or 'pydoc', never on the tokens you report"
            )
        from golfpack.formats.shards import load_tokens

        toks = np.asarray(load_tokens(source, max_tokens), dtype=np.int64)
    if max_tokens is not None:
        toks = toks[:max_tokens]
    return toks


def calib_halves(source: str, *, tokenizer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Calibration tokens split in two: the first half is measured on (per-tensor sensitivity, GPTQ
    Hessians), the second half is held out to judge whole layouts (the search's joint selection)."""
    toks = calib_tokens(source, tokenizer=tokenizer)
    half = len(toks) // 2
    return toks[:half], toks[half:]


# ------------------------------------------------------------------------------------------------
# batches


@dataclass(frozen=True)
class CalibBatch:
    """A fixed (B, T) batch of inputs and next-token targets."""

    inputs: Tensor  # (B, T) int64
    targets: Tensor  # (B, T) int64
    digest: str  # sha256 of the token bytes: part of every cache key

    @property
    def tokens(self) -> int:
        return int(self.targets.numel())


def make_batch(tokens: np.ndarray, batch: int, seq_len: int, *, offset: int = 0, vocab_size: int | None = None) -> CalibBatch:
    """B contiguous windows of T+1 tokens, spread evenly over the token stream (starting at `offset`)."""
    toks = np.asarray(tokens, dtype=np.int64)[offset:]
    need = seq_len + 1
    if len(toks) < batch * need:
        raise DataError(f"calibration text has {len(toks):,} tokens; need {batch * need:,} for {batch}x{seq_len} (use a smaller batch or seq_len)")
    if vocab_size is not None and len(toks) and int(toks.max()) >= vocab_size:
        raise DataError(f"calibration token id {int(toks.max())} >= model vocab {vocab_size}: wrong tokenizer for this checkpoint?")
    stride = (len(toks) - need) // max(1, batch - 1) if batch > 1 else 0
    rows = np.stack([toks[i * stride : i * stride + need] for i in range(batch)])
    t = torch.from_numpy(rows)
    return CalibBatch(t[:, :-1].contiguous(), t[:, 1:].contiguous(), hashlib.sha256(rows.tobytes()).hexdigest())


# ------------------------------------------------------------------------------------------------
# the pinned GPTQ calibration


@dataclass(frozen=True)
class GptqCalibration:
    """Where a layout's GPTQ Hessians come from (stored in the policy; never validation tokens)."""

    source: str  # train-shard glob or 'pydoc' (calib_tokens)
    batch: int = DEFAULT_GPTQ_BATCH  # sequences, spread over the FIRST half of the calibration tokens
    seq: int = DEFAULT_GPTQ_SEQ  # tokens per sequence
    digest: str | None = None  # sha256 of the batch's tokens; pack refuses other tokens

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Any, where: str = "policy calibration") -> GptqCalibration:
        if not isinstance(d, dict) or not isinstance(d.get("source"), str):
            raise FormatError(f"{where}: expected {{source, batch, seq, digest}}, got {d!r}")
        unknown = set(d) - CALIBRATION_KEYS
        if unknown:
            raise FormatError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        try:
            return cls(source=d["source"], batch=int(d.get("batch", DEFAULT_GPTQ_BATCH)), seq=int(d.get("seq", DEFAULT_GPTQ_SEQ)),
                       digest=None if d.get("digest") is None else str(d["digest"]))
        except (TypeError, ValueError) as e:
            raise FormatError(f"{where}: {e}") from None


def calibration_batch(cal: GptqCalibration, *, tokenizer: str | None = None, vocab_size: int | None = None, source: str | None = None) -> CalibBatch:
    """The CalibBatch that `cal` names (its first-half tokens), digest-checked. `source` overrides the path
    (the same shards moved elsewhere); the digest still has to match."""
    batch = make_batch(calib_halves(source or cal.source, tokenizer=tokenizer)[0], cal.batch, cal.seq, vocab_size=vocab_size)
    if cal.digest is not None and batch.digest != cal.digest:
        raise DataError(
            f"calibration tokens from {source or cal.source!r} differ from the ones this layout's GPTQ levels were "
            f"computed on (digest {batch.digest[:12]} vs {cal.digest[:12]}): calibrate on the same shards"
        )
    return batch


__all__ = [
    "CALIB_MAX_TOKENS",
    "DEFAULT_GPTQ_BATCH",
    "DEFAULT_GPTQ_SEQ",
    "CalibBatch",
    "GptqCalibration",
    "calib_halves",
    "calib_tokens",
    "calibration_batch",
    "make_batch",
    "pydoc_tokens",
    "self_tokens",
]
