"""Fixtures shared by the search tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory):
    """A small baseline-family GPT with trained-like weight scales (fast to pack and run)."""
    from golfpack.model import GPT, ModelConfig

    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=1024, num_layers=2, model_dim=32, num_heads=2, num_kv_heads=1, mlp_hidden=64))
    with torch.no_grad():
        for n, prm in model.named_parameters():
            if prm.ndim == 2:
                prm.normal_(0, 0.05 if "tok_emb" in n else 0.1)
    path = tmp_path_factory.mktemp("small") / "small.pt"
    torch.save(model.state_dict(), path)
    return path
