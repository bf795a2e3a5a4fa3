"""The foreign test LM (foreign_lm.py), trained a few CPU steps on Python's docs (never val), once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

FOREIGN = Path(__file__).with_name("foreign_lm.py")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def pydoc_ids(sp1024_model) -> np.ndarray:
    from golfpack.packer.calibration import pydoc_tokens

    return pydoc_tokens(str(sp1024_model))


def train_foreign(ids: np.ndarray, steps: int = 15, seed: int = 0) -> dict[str, torch.Tensor]:
    """A few AdamW steps on 8 x 64-token windows of `ids`: enough for weights with trained-like structure."""
    from golfpack.adapters import load_adapter

    torch.manual_seed(seed)
    net = load_adapter(str(FOREIGN)).module.ForeignLM()
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    rng = np.random.default_rng(seed)
    t = torch.from_numpy(ids.astype(np.int64))
    for _ in range(steps):
        starts = rng.integers(0, len(ids) - 65, size=8)
        w = torch.stack([t[s : s + 65] for s in starts])
        logits = net(w[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), w[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


@pytest.fixture(scope="session")
def foreign_ckpt(tmp_path_factory, pydoc_ids) -> Path:
    path = tmp_path_factory.mktemp("foreign") / "foreign_model.pt"
    torch.save(train_foreign(pydoc_ids), path)
    return path


@pytest.fixture(scope="session")
def calib_shard(tmp_path_factory, pydoc_ids) -> str:
    """Train-style shard of Python's docs for --calib (never val tokens)."""
    from golfpack.formats.shards import write_shard

    d = tmp_path_factory.mktemp("fcalib")
    write_shard(d / "docs_train_000000.bin", pydoc_ids.astype(np.uint16))
    return str(d / "docs_train_*.bin")
