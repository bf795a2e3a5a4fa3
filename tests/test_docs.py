"""The Python examples in docs/api.md and the README run as written (on the shared checkpoint and val data)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import shared_file

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def python_blocks(doc: Path) -> list[str]:
    return BLOCK.findall(doc.read_text(encoding="utf-8"))


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file names the examples use, pointing at the shared challenge material."""
    os.symlink(shared_file("checkpoints/nolanvild_final_model.pt"), tmp_path / "final_model.pt")
    os.symlink(shared_file("text/fineweb_val_000000_first1040298tok.bin"), tmp_path / "fineweb_val_000000.bin")
    os.symlink(shared_file("tokenizers/fineweb_1024_bpe.model"), tmp_path / "fineweb_1024_bpe.model")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_block(code: str, where: str) -> dict:
    scope: dict = {"__name__": "__doc_example__"}
    exec(compile(code, where, "exec"), scope)  # noqa: S102 - our own documentation
    return scope


def test_api_doc_has_the_documented_examples() -> None:
    blocks = python_blocks(ROOT / "docs" / "api.md")
    assert len(blocks) == 3, "docs/api.md: the job, the search and training examples"
    assert all("import golfpack as gp" in b for b in blocks)


def test_api_doc_whole_job_runs(workdir: Path) -> None:
    scope = run_block(python_blocks(ROOT / "docs" / "api.md")[0], "docs/api.md#the-whole-job")
    art, rep = scope["art"], scope["rep"]
    assert (workdir / "model.qg3").read_bytes() == art.data
    assert art.policy.name == "int6+tok8" and art.codec == "lzma"
    assert rep.ok and rep.kind == "qgv3" and rep.digests_checked == len(art.records)
    assert 0 < rep.val_bpb_gap < 0.05  # int6+tok8 on nolanvild costs ~0.005 bpb


def test_readme_python_example_runs(workdir: Path) -> None:
    blocks = python_blocks(ROOT / "README.md")
    assert blocks, "README: the Python API section"
    scope = run_block(blocks[0], "README.md#python-api")
    assert (workdir / "model.qg3").is_file()
    assert scope["rep"].ok


@pytest.mark.slow
def test_api_doc_search_runs(workdir: Path) -> None:
    scope = run_block(python_blocks(ROOT / "docs" / "api.md")[1], "docs/api.md#search")
    res = scope["res"]
    assert res.total_bytes <= 280_000
    assert (workdir / "best.qg3").read_bytes() == res.artifact.data
    assert (workdir / "best.policy.toml").is_file()


@pytest.mark.slow
def test_api_doc_training_runs(workdir: Path) -> None:
    from golfpack.demo_data import make_demo_data

    data = make_demo_data(workdir / "demo")
    shards = workdir / "shards"
    shards.mkdir()
    shutil.copy(data.tokenizer, shards / "sp.model")
    shutil.copy(next(Path(data.train_pattern).parent.glob("demo_train_*.bin")), shards / "train_000000.bin")
    shutil.copy(next(Path(data.val_pattern).parent.glob("demo_val_*.bin")), shards / "val_000000.bin")
    scope = run_block(python_blocks(ROOT / "docs" / "api.md")[2], "docs/api.md#training")
    assert scope["result"].steps == 20
    assert (workdir / "runs" / "tiny" / "final_model.pt").is_file()
