from __future__ import annotations

import json

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
