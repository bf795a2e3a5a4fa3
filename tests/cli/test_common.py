"""`golfpack.cli._common`: a library UsageError about one parameter is shown with the flag it came from."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from golfpack.cli import main
from golfpack.cli._common import command_flags, usage_text, user_errors
from golfpack.errors import DataError, UsageError


def test_usage_text_adds_the_default_flag():
    e = UsageError("batch_size must be positive, got 0", param="batch_size")
    assert usage_text(e) == "batch_size must be positive, got 0 (--batch-size)"
    assert usage_text(e, {"batch_size": "-b"}) == "batch_size must be positive, got 0 (-b)"
    assert usage_text(e, {"batch_size": ""}) == "batch_size must be positive, got 0"  # no flag on this command
    assert usage_text(UsageError("two things wrong")) == "two things wrong"


def test_user_errors_only_flags_usage_errors():
    with pytest.raises(click.ClickException) as e, user_errors():
        raise DataError("val tokens contain id 9999")
    assert e.value.message == "val tokens contain id 9999"
    with pytest.raises(click.ClickException) as e, user_errors(lambda: {"overrides": "--set"}):
        raise UsageError("bad override 'x'", param="overrides")
    assert e.value.message == "bad override 'x' (--set)"


def test_command_flags_come_from_the_options():
    from golfpack.cli.pack import pack_cmd
    from golfpack.cli.train import train_cmd

    f = command_flags(pack_cmd)
    assert f["overrides"] == "--set" and f["out"] == "--out" and f["policy_name"] == "--policy"
    assert f["require_config"] == "--no-config"  # the module's PARAM_FLAGS
    t = command_flags(train_cmd)
    assert t["train_files"] == "--train" and t["tokenizer_path"] == "--tokenizer"
    assert t["device"] == "--set device=..."  # a TrainConfig field without its own option


def test_eval_cli_shows_the_flag(tmp_path, monkeypatch):
    """`golfpack eval --batch-size 0`: the library's own message, plus the flag. The loading is stubbed
    (evaluate itself raises), so the test needs no checkpoint."""
    from golfpack.evaluator import api

    def load_nothing(path, **kw):
        return api.evaluate(None, list(range(300)), None, seq_len=kw["seq_len"], batch_size=kw["batch_size"])

    monkeypatch.setattr(api, "evaluate_path", load_nothing)
    res = CliRunner().invoke(main, ["eval", str(tmp_path / "m.pt"), "--val", "v", "--tokenizer", "t.model",
                                    "--seq-len", "128", "--batch-size", "0"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip() == "Error: batch_size must be positive, got 0 (--batch-size)"


def test_pack_cli_shows_the_set_flag(tmp_path):
    import torch

    ckpt = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(4, 4)}, ckpt)
    res = CliRunner().invoke(main, ["pack", str(ckpt), "--no-config", "--dry-run", "--set", "nomatch.*=int5"])
    assert res.exit_code == 1, res.output
    assert res.output.strip().startswith("Error: override 'nomatch.*=int5': pattern 'nomatch.*' matches no tensor")
    assert res.output.strip().endswith("(--set)")


def test_train_cli_names_a_config_field_as_a_set(tmp_path):
    res = CliRunner().invoke(main, ["train", "--config", "tiny", "--set", "iterations"])
    assert res.exit_code == 1
    assert res.output.strip() == "Error: bad override 'iterations': expected KEY=VALUE, e.g. iterations=500 (--set)"
