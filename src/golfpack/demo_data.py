"""Built-in demo material that needs no download: English prose that ships with Python itself.

`pydoc_data.topics` holds the language reference's topic pages (~0.5 MB of text). The demo trains
a byte-fallback BPE tokenizer on it (so the byte accounting has real leading-space and byte pieces),
then splits the pages into disjoint train and val documents: the demo never trains on its val text.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from golfpack._io import write_bytes_atomic
from golfpack._pydoc_text import pydoc_documents
from golfpack.formats.shards import write_shard
from golfpack.tokenizer import load_sentencepiece

DEMO_VOCAB = 1024
BOS_ID = 1


@dataclass(frozen=True)
class DemoData:
    tokenizer: Path  # sentencepiece model trained on the demo text
    train_pattern: str  # glob of train shards
    val_pattern: str  # glob of val shards (disjoint documents)
    train_tokens: int
    val_tokens: int


def demo_documents() -> list[str]:
    """The topic pages, one document each, in a fixed order (the same text `--calib pydoc` reads)."""
    return pydoc_documents()


def encode_documents(sp: Any, docs: Sequence[str]) -> np.ndarray:
    """Token ids of `docs` as one stream, each document opened by BOS (the demo shards' layout), as uint16."""
    ids: list[int] = []
    for d in docs:
        ids.append(BOS_ID)
        ids.extend(sp.encode(d))
    return np.asarray(ids, dtype=np.uint16)


def make_demo_data(out_dir: str | Path, val_every: int = 10, documents: Sequence[str] | None = None) -> DemoData:
    """Write tokenizer + train/val shards under out_dir (every `val_every`-th document is val). `documents`:
    the text to use instead of `demo_documents()` (a bench's larger corpus); the tokenizer sees only train ones."""
    import sentencepiece as spm

    if val_every < 2:
        raise ValueError(f"val_every must be >= 2 (every val_every-th document is val), got {val_every}")
    docs = demo_documents() if documents is None else [d for d in documents if d.strip()]
    if len(docs) < val_every:
        raise ValueError(f"{len(docs)} non-empty documents: need at least val_every={val_every} for one val and train documents")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_docs = [d for i, d in enumerate(docs) if i % val_every]
    val_docs = [d for i, d in enumerate(docs) if i % val_every == 0]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(train_docs),
        model_writer=buf,
        vocab_size=DEMO_VOCAB,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        pad_id=0,
        bos_id=BOS_ID,
        eos_id=2,
        unk_id=3,
        max_sentence_length=1 << 20,
        minloglevel=2,
    )
    tok_path = out / "demo_bpe1024.model"
    write_bytes_atomic(tok_path, buf.getvalue())
    sp = load_sentencepiece(tok_path)
    train, val = encode_documents(sp, train_docs), encode_documents(sp, val_docs)
    write_shard(out / "demo_train_000000.bin", train)
    write_shard(out / "demo_val_000000.bin", val)
    return DemoData(
        tokenizer=tok_path,
        train_pattern=str(out / "demo_train_*.bin"),
        val_pattern=str(out / "demo_val_*.bin"),
        train_tokens=int(train.size),
        val_tokens=int(val.size),
    )
