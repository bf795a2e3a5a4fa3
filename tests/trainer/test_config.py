from __future__ import annotations

import json
import re

import pytest

from golfpack.errors import GolfpackError
from golfpack.model import count_params
from golfpack.trainer.config import PRESETS, TrainConfig, config_help, load_config, preset


def test_baseline_preset_is_the_challenge_baseline():
    c = preset("baseline")
    m = c.model_config()
    assert (m.num_layers, m.model_dim, m.num_heads, m.num_kv_heads, m.mlp_hidden, m.vocab_size) == (9, 512, 8, 4, 1024, 1024)
    assert m.tie_embeddings and m.logit_softcap == 30.0 and m.rope_base == 10000.0
    assert (c.train_seq_len, c.train_batch_tokens, c.max_wallclock_seconds) == (1024, 524_288, 600.0)
    assert (c.matrix_lr, c.scalar_lr, c.tied_embed_lr, c.muon_momentum, c.warmup_steps) == (0.04, 0.04, 0.05, 0.95, 20)
    # The baseline's published parameter count.
    assert count_params(m) == 17_059_912


def test_seed_preset_values():
    c = preset("mlp3x-seq2048")
    assert c.model_config().mlp_hidden == 1536
    assert (c.train_seq_len, c.train_batch_tokens, c.warmdown_iters) == (2048, 786_432, 3000)
    assert (c.tied_embed_lr, c.matrix_lr, c.scalar_lr, c.muon_momentum) == (0.03, 0.02, 0.02, 0.99)


def test_every_preset_builds():
    for name in PRESETS:
        preset(name).model_config()


def test_toml_file_with_preset_and_cli_overrides(tmp_path):
    p = tmp_path / "run.toml"
    p.write_text('preset = "tiny"\niterations = 77\nmatrix_lr = 0.01\nqat_policy = "int6+tok8"\n')
    c = load_config(p, overrides=["iterations=12", "tie_embeddings=false", "mlp_mult=3"])
    assert c.iterations == 12 and c.matrix_lr == 0.01 and c.qat_policy == "int6+tok8"
    assert c.tie_embeddings is False and c.mlp_mult == 3.0 and c.num_layers == 2  # from tiny


def test_json_file_and_bare_preset_name(tmp_path):
    p = tmp_path / "run.json"
    p.write_text(json.dumps({"preset": "baseline", "seed": 7}))
    assert load_config(p).seed == 7
    assert load_config("tiny").num_layers == 2


@pytest.mark.parametrize(
    "sets, msg",
    [
        (["no_such_option=1"], "unknown training option"),
        (["iterations=abc"], "iterations"),
        (["iterations=1.5"], "integer"),
        (["tie_embeddings=maybe"], "true/false"),
        (["device=tpu"], "device"),
        (["num_heads=7"], "divisible"),
        (["iterations"], "KEY=VALUE"),
    ],
)
def test_bad_values_are_user_errors(sets, msg):
    with pytest.raises(GolfpackError, match=msg):
        load_config("tiny", overrides=sets)


@pytest.mark.parametrize(
    "key, value, rule",
    [
        ("beta1", "1.0", "in \\[0, 1\\)"),
        ("beta1", "-0.1", "in \\[0, 1\\)"),
        ("beta2", "1.5", "in \\[0, 1\\)"),
        ("beta2", "nan", "in \\[0, 1\\)"),
        ("muon_momentum", "1.0", "in \\[0, 1\\)"),
        ("muon_momentum_warmup_start", "-1", "in \\[0, 1\\)"),
        ("muon_backend_steps", "0", ">= 1"),
        ("matrix_lr", "-0.01", "a finite number >= 0"),
        ("scalar_lr", "inf", "a finite number >= 0"),
        ("tied_embed_lr", "-1", "a finite number >= 0"),
        ("embed_lr", "-0.6", "a finite number >= 0"),
        ("head_lr", "nan", "a finite number >= 0"),
        ("adam_eps", "-1e-8", "a finite number >= 0"),
        ("grad_clip_norm", "-1", "a finite number >= 0"),
        ("qat_start_frac", "1.5", "in \\[0, 1\\]"),
        ("qat_start_frac", "-0.1", "in \\[0, 1\\]"),
        ("qat_start_time_frac", "2", "in \\[0, 1\\]"),
        ("ema_decay", "1.0", "in \\[0, 1\\)"),
        ("ema_decay", "-0.5", "in \\[0, 1\\)"),
        ("train_seq_len", "0", ">= 1"),
        ("train_batch_tokens", "-8", ">= 1"),
        ("iterations", "0", ">= 1"),
        ("val_batch_tokens", "0", ">= 1"),
        ("warmup_steps", "-1", ">= 0"),
        ("muon_momentum_warmup_steps", "-5", ">= 0"),
        ("max_wallclock_seconds", "-1", "a finite number >= 0"),
        ("rope_base", "0", "a finite number > 0"),
        ("logit_softcap", "nan", "a finite number > 0"),
    ],
)
def test_out_of_range_values_are_one_clear_error(key, value, rule):
    from golfpack.trainer.config import TrainConfig as TC

    default = TC.__dataclass_fields__[key].default
    with pytest.raises(GolfpackError) as e:
        load_config("tiny", overrides=[f"{key}={value}"])
    msg = str(e.value)
    assert re.fullmatch(f"invalid training config: {key} must be {rule}.*, got .* \\(default {re.escape(repr(default))}\\)", msg), msg
    assert msg.count(" must be ") == 1  # one problem, one message


def test_range_edges_are_accepted():
    c = load_config("tiny", overrides=["beta1=0", "ema_decay=0.999", "qat_start_frac=1", "qat_start_time_frac=0",
                                       "grad_clip_norm=0", "matrix_lr=0", "muon_backend_steps=1"])
    assert (c.beta1, c.ema_decay, c.qat_start_frac, c.muon_backend_steps) == (0.0, 0.999, 1.0, 1)


def test_bad_files(tmp_path):
    with pytest.raises(GolfpackError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("iterations = = 3")
    with pytest.raises(GolfpackError, match="cannot parse"):
        load_config(bad)
    with pytest.raises(GolfpackError, match="unknown training preset"):
        (tmp_path / "p.toml").write_text('preset = "huge"\n')
        load_config(tmp_path / "p.toml")


def test_config_help_lists_every_field_with_its_comment():
    text = config_help()
    for name in TrainConfig.__dataclass_fields__:
        assert f"\n{name} (" in "\n" + text
    assert "Muon lr of the 2-D block matrices" in text


def test_shipped_config_files_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs"
    files = sorted(root.glob("*.toml"))
    assert {f.stem for f in files} >= {"baseline", "mlp3x-seq2048", "tiny"}
    for f in files:
        c = load_config(f)
        assert c.to_dict() == load_config(f.stem, overrides=[f"{k}={v}" for k, v in _file_values(f).items()]).to_dict()


def _file_values(path):
    import tomllib

    d = tomllib.loads(path.read_text())
    d.pop("preset", None)
    return d
