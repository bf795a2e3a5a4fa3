"""Bad model code: one clear `Error:` line naming the file and what to fix, a non-zero exit, nothing written."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from golfpack.cli import main
from tests.adapters.conftest import FOREIGN


def fails(tmp_path, *args: str) -> str:
    out = tmp_path / "never.qg3"
    r = CliRunner().invoke(main, [*args, "-o", str(out)] if args[0] == "pack" else list(args))
    assert r.exit_code != 0, r.output
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))
    lines = [ln for ln in r.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


def write(tmp_path, name: str, text: str):
    f = tmp_path / name
    f.write_text(text)
    return f


def test_a_file_that_fails_to_import(tmp_path, foreign_ckpt) -> None:
    f = write(tmp_path, "broken.py", "import torch\nimport no_such_module_for_golfpack\n")
    line = fails(tmp_path, "pack", str(foreign_ckpt), "--model", str(f))
    assert f"model file {f} failed to import" in line and "no_such_module_for_golfpack" in line and "(--model)" in line


def test_a_name_the_file_does_not_define(tmp_path, foreign_ckpt) -> None:
    line = fails(tmp_path, "pack", str(foreign_ckpt), "--model", f"{FOREIGN}:make_it")
    assert f"model file {FOREIGN} defines no 'make_it'" in line and "build_model" in line and "ForeignLM" in line


@pytest.mark.parametrize("body, says", [
    ("return self.net(input_ids).mean()", "returned a tensor of shape ()"),  # a loss, not logits
    ("return self.net(input_ids)[0]", "returned a tensor of shape (2, 1024)"),  # (T, V): the batch dim dropped
])
def test_a_forward_that_does_not_return_logits(tmp_path, foreign_ckpt, body, says) -> None:
    f = write(tmp_path, "lossy.py", FOREIGN.read_text() + f'''
class Lossy(ForeignLM):
    def forward(self, input_ids):
        {body.replace("self.net(", "super().forward(")}
''')
    line = fails(tmp_path, "pack", str(foreign_ckpt), "--model", f"{f}:Lossy")
    assert "lossy.py:Lossy: the model " + says in line and "logits of shape (1, 2, V)" in line
    assert "define logits(model, input_ids)" in line


def test_a_state_dict_whose_keys_the_module_rejects(tmp_path, foreign_ckpt) -> None:
    sd = torch.load(foreign_ckpt)
    sd["head.weight"] = sd.pop("lm_head.weight")
    torch.save(sd, tmp_path / "renamed.pt")
    line = fails(tmp_path, "pack", str(tmp_path / "renamed.pt"), "--model", str(FOREIGN))
    assert "foreign_lm.py:build_model: the module's keys do not match the state dict" in line
    assert "missing lm_head.weight; unexpected head.weight" in line and "Fix the model code" in line


def test_an_adapter_whose_vocab_differs_from_the_tokenizer(tmp_path, foreign_ckpt, sp1024_model, val_shard) -> None:
    f = write(tmp_path, "short.py", FOREIGN.read_text() + '''

def logits(model, input_ids):
    return model(input_ids)[..., :1000]
''')
    line = fails(tmp_path, "eval", str(foreign_ckpt), "--model", str(f), "--val", str(val_shard), "--tokenizer",
                 str(sp1024_model), "--max-tokens", "2049", "--seq-len", "128")
    assert "short.py:build_model: its logits have 1000 entries per token" in line and "1024 pieces" in line
