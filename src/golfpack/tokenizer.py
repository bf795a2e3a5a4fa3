"""Per-token byte tables, built exactly as the challenge's `build_sentencepiece_luts`.

bytes(target) = base_bytes[target] + (has_leading_space[target] and not is_boundary[prev]).
Control/unknown/unused pieces are boundaries worth 0 bytes, byte-fallback pieces 1 byte, every
other piece the UTF-8 length of its text after stripping one leading U+2581 (the space marker,
counted only when the previous token is not a boundary, e.g. not right after BOS).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from golfpack.errors import DataError

SPACE_MARK = "\u2581"


@dataclass(frozen=True)
class ByteLUTs:
    """Lookup tables indexed by token id (length = vocab size)."""

    base_bytes: Tensor  # int16: UTF-8 bytes of the piece without its leading space marker
    has_leading_space: Tensor  # bool: the piece starts with U+2581 (one extra byte unless after a boundary)
    is_boundary: Tensor  # bool: control/unknown/unused piece (0 bytes; suppresses the next token's space)

    @property
    def vocab_size(self) -> int:
        return int(self.base_bytes.numel())

    def to(self, device: str | torch.device) -> ByteLUTs:
        return ByteLUTs(self.base_bytes.to(device), self.has_leading_space.to(device), self.is_boundary.to(device))

    def token_bytes(self, prev_ids: Tensor, tgt_ids: Tensor) -> Tensor:
        """Bytes of each target given its predecessor, int16 like the reference (same shape as tgt_ids)."""
        b = self.base_bytes[tgt_ids].to(torch.int16)
        b += (self.has_leading_space[tgt_ids] & ~self.is_boundary[prev_ids]).to(torch.int16)
        return b


def load_sentencepiece(path: str | os.PathLike[str]):
    """Open a sentencepiece model; DataError if it is missing or not a model. The one place golfpack
    constructs a SentencePieceProcessor."""
    import sentencepiece as spm

    p = Path(path)
    if not p.is_file():
        raise DataError(f"tokenizer {p}: file not found")
    try:
        return spm.SentencePieceProcessor(model_file=str(p))
    except Exception as e:  # sentencepiece raises OSError/RuntimeError with long messages
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:120]
        raise DataError(f"tokenizer {p}: not a sentencepiece model ({first})") from None


def build_luts(sp_model_path: str | os.PathLike[str], vocab_size: int) -> ByteLUTs:
    """Byte LUTs for a tokenizer; `vocab_size` (the model's) must equal the tokenizer's vocab size."""
    sp = load_sentencepiece(sp_model_path)
    n = int(sp.vocab_size())
    if n != int(vocab_size):
        raise DataError(
            f"vocab mismatch: the model has {vocab_size} token embeddings but tokenizer {sp_model_path} has "
            f"{n} pieces; pass the tokenizer the model was trained with"
        )
    return luts_from_processor(sp)


def luts_from_processor(sp) -> ByteLUTs:
    n = int(sp.vocab_size())
    base = np.zeros(n, dtype=np.int16)
    space = np.zeros(n, dtype=np.bool_)
    boundary = np.ones(n, dtype=np.bool_)
    for i in range(n):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(SPACE_MARK):
            space[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return ByteLUTs(torch.from_numpy(base), torch.from_numpy(space), torch.from_numpy(boundary))


__all__ = ["ByteLUTs", "build_luts", "load_sentencepiece", "luts_from_processor"]
