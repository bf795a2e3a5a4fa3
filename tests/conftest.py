"""Shared fixtures: paths into ../shared/data (real challenge material), skipped cleanly if absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GOLFPACK_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_file(rel: str) -> Path:
    p = SHARED / rel
    if not p.is_file():
        pytest.skip(f"shared test data {rel} not present under {SHARED}")
    return p


@pytest.fixture(scope="session")
def sp1024_model() -> Path:
    return shared_file("tokenizers/fineweb_1024_bpe.model")


@pytest.fixture(scope="session")
def val_shard() -> Path:
    return shared_file("text/fineweb_val_000000_first1040298tok.bin")


@pytest.fixture(scope="session")
def val_docs_jsonl() -> Path:
    return shared_file("text/fineweb_val_first901docs_decoded.jsonl")


@pytest.fixture(scope="session")
def nolanvild_pt() -> Path:
    return shared_file("checkpoints/nolanvild_final_model.pt")


@pytest.fixture(scope="session")
def nolanvild_ptz() -> Path:
    return shared_file("checkpoints/nolanvild_final_model.int8.ptz")


@pytest.fixture(scope="session")
def taleef_pt() -> Path:
    return shared_file("checkpoints/Taleef7_final_model.pt")


@pytest.fixture(scope="session")
def taleef_ptz() -> Path:
    return shared_file("checkpoints/Taleef7_final_model.int8.ptz")


@pytest.fixture(scope="session")
def ginferno_pt() -> Path:
    return shared_file("checkpoints/g3n-inferno_final_model.pt")


@pytest.fixture(scope="session")
def neo_ptz() -> Path:
    return shared_file("artifacts/NeoMakesGames_final_model.int8.ptz")
