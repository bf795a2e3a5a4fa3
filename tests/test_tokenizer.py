"""Byte LUTs on the real sp1024 tokenizer."""

from __future__ import annotations

import json

import pytest
import torch

from golfpack.errors import GolfpackError
from golfpack.tokenizer import build_luts, load_sentencepiece


def test_lut_classes(sp1024_model):
    luts = build_luts(sp1024_model, 1024)
    assert luts.vocab_size == 1024 and luts.base_bytes.dtype == torch.int16
    # pad/bos/eos are control and unk is unknown: boundaries worth 0 bytes
    assert luts.is_boundary[:4].tolist() == [True] * 4 and luts.base_bytes[:4].tolist() == [0] * 4
    # 256 byte-fallback pieces <0x00>..<0xFF>: 1 byte each, no leading space
    assert luts.base_bytes[4:260].tolist() == [1] * 256 and not luts.has_leading_space[4:260].any()
    assert not luts.is_boundary[4:].any()
    # '▁t' (id 260): one byte of text plus a leading space; 'in' (id 262): two bytes, no space
    assert (luts.base_bytes[260].item(), luts.has_leading_space[260].item()) == (1, True)
    assert (luts.base_bytes[262].item(), luts.has_leading_space[262].item()) == (2, False)


def test_leading_space_dropped_after_boundary(sp1024_model):
    luts = build_luts(sp1024_model, 1024)
    prev = torch.tensor([1, 262])  # BOS (boundary), then an ordinary piece
    tgt = torch.tensor([260, 260])  # '▁t' twice
    assert luts.token_bytes(prev, tgt).tolist() == [1, 2]


def test_bytes_equal_utf8_length_of_real_docs(sp1024_model, val_docs_jsonl):
    """Over real val docs, LUT bytes of [BOS]+ids equal the UTF-8 length of the decoded text exactly."""
    sp = load_sentencepiece(sp1024_model)
    luts = build_luts(sp1024_model, 1024)
    with open(val_docs_jsonl) as f:
        docs = [json.loads(next(f))["text"] for _ in range(120)]
    for text in docs:
        ids = torch.tensor([sp.bos_id(), *sp.encode(text)])
        assert int(luts.token_bytes(ids[:-1], ids[1:]).sum()) == len(text.encode("utf-8"))


def test_vocab_mismatch_is_a_user_error(sp1024_model):
    with pytest.raises(GolfpackError, match="vocab mismatch.*512.*1024"):
        build_luts(sp1024_model, 512)


def test_missing_or_bad_tokenizer(tmp_path):
    with pytest.raises(GolfpackError, match="not found"):
        build_luts(tmp_path / "nope.model", 1024)
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(GolfpackError, match="not a sentencepiece model"):
        build_luts(bad, 1024)
