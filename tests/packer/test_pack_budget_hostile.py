"""Issue 11 class 8: `--code OUT` - the artifact counted as its own code file - is refused, and the budget is
re-checked with the sizes as they are after the write."""

from __future__ import annotations

import os

import pytest
import torch
from click.testing import CliRunner

from golfpack.cli import main
from golfpack.errors import BudgetError, UsageError
from golfpack.model import GPT, ModelConfig
from golfpack.packer import pack as P
from golfpack.packer.pack import pack_file
from golfpack.packer.policy import Policy


@pytest.fixture
def tiny_pt(tmp_path):
    cfg = ModelConfig(vocab_size=32, num_layers=2, model_dim=16, num_heads=2, num_kv_heads=1, mlp_hidden=32)
    torch.manual_seed(0)
    p = tmp_path / "m.pt"
    torch.save(GPT(cfg).state_dict(), p)
    return p


@pytest.mark.parametrize("alias", ["same", "relative", "symlink", "hardlink"])
def test_code_that_is_the_output_is_refused(tiny_pt, tmp_path, alias, monkeypatch) -> None:
    out = tmp_path / "out.qg3"
    out.write_bytes(b"x")  # a small old artifact: counting it as code would understate the new total
    code = {"same": out, "relative": tmp_path / "." / "out.qg3"}.get(alias)
    if alias == "symlink":
        code = tmp_path / "link.py"
        code.symlink_to(out)
    elif alias == "hardlink":
        code = tmp_path / "hard.py"
        os.link(out, code)
    with pytest.raises(UsageError, match="is the output path") as e:
        pack_file(tiny_pt, out, policy=Policy.preset("int6+tok8"), code=[str(code)], codec="zlib")
    assert e.value.param == "code"
    assert out.read_bytes() == b"x"  # nothing written
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, ["pack", str(tiny_pt), "-o", "out.qg3", "--code", "out.qg3", "--codec", "zlib"])
    assert res.exit_code != 0 and "--code" in res.output and "output path" in res.output and "Traceback" not in res.output


def test_budget_is_rechecked_after_the_write(tiny_pt, tmp_path, monkeypatch) -> None:
    code = tmp_path / "train_gpt.py"
    code.write_bytes(b"#" * 100)
    out = tmp_path / "out.qg3"
    real = P.write_bytes_atomic

    def write_and_grow(path, data):  # a code file that changes while the artifact is written
        real(path, data)
        code.write_bytes(b"#" * 10_000_000)

    monkeypatch.setattr(P, "write_bytes_atomic", write_and_grow)
    with pytest.raises(BudgetError, match="over budget after writing"):
        pack_file(tiny_pt, out, policy=Policy.preset("int6+tok8"), code=[str(code)], codec="zlib", budget=9_000_000)
    assert not out.exists()
    monkeypatch.setattr(P, "write_bytes_atomic", real)
    code.write_bytes(b"#" * 100)
    res = pack_file(tiny_pt, out, policy=Policy.preset("int6+tok8"), code=[str(code)], codec="zlib", budget=9_000_000)
    assert out.stat().st_size == res.model_bytes and res.total_bytes == res.model_bytes + 100
