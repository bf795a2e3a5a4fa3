"""Policies: rule matching, presets, file forms, --set overrides, serialization."""

from __future__ import annotations

import json

import pytest
import torch

from golfpack.errors import GolfpackError
from golfpack.formats.checkpoint import load_state_dict
from golfpack.formats.spec import TensorSpec
from golfpack.packer.policy import PRESETS, Policy, Rule, resolve_policy


def _sd() -> dict[str, torch.Tensor]:
    return {
        "tok_emb.weight": torch.zeros(1024, 64, dtype=torch.bfloat16),
        "skip_weights": torch.ones(1, 64),
        "blocks.0.attn.c_q.weight": torch.zeros(64, 64),
        "blocks.0.attn.q_gain": torch.ones(4),
        "blocks.0.attn_scale": torch.ones(64),
        "blocks.0.resid_mix": torch.ones(2, 64),
        "blocks.0.mlp.fc.weight": torch.zeros(128, 64),
        "blocks.0.mlp.proj.weight": torch.zeros(64, 128),
        "blocks.1.mlp.fc.weight": torch.zeros(128, 64),
        "tiny.weight": torch.zeros(4, 8),
        "norm.bias": torch.zeros(64),
        "counter": torch.tensor(3),
        "lm_head.weight": torch.zeros(1024, 64),
    }


def _labels(policy: Policy, sd: dict[str, torch.Tensor]) -> dict[str, str]:
    return {k: v.label() for k, v in policy.resolve(sd).items()}


def test_int6_tok8_quantizes_small_matrices_and_keeps_controls() -> None:
    got = _labels(Policy.preset("int6+tok8"), _sd())
    assert got == {
        "tok_emb.weight": "int8",
        "skip_weights": "fp16",  # control name, even though it is 2-D: passthrough
        "blocks.0.attn.c_q.weight": "int6",  # 4,096 elements: far below the baseline's 65,536 cut
        "blocks.0.attn.q_gain": "fp16",
        "blocks.0.attn_scale": "fp16",
        "blocks.0.resid_mix": "fp16",  # control: passthrough although 2-D and 128 elements
        "blocks.0.mlp.fc.weight": "int6",
        "blocks.0.mlp.proj.weight": "int6",
        "blocks.1.mlp.fc.weight": "int6",
        "tiny.weight": "fp16",  # 32 elements: scales would cost more than they save
        "norm.bias": "fp16",  # 1-D, not a control name
        "counter": "exact",  # integers are always exact
        "lm_head.weight": "int8",
    }


def test_int5mlp_int6attn_tok8_and_int6_presets() -> None:
    got = _labels(Policy.preset("int5mlp+int6attn+tok8"), _sd())
    assert got["blocks.0.mlp.fc.weight"] == got["blocks.0.mlp.proj.weight"] == "int5"
    assert got["blocks.0.attn.c_q.weight"] == "int6" and got["tok_emb.weight"] == "int8"
    got6 = _labels(Policy.preset("int6"), _sd())
    assert got6["tok_emb.weight"] == got6["blocks.0.mlp.fc.weight"] == "int6"


def test_int8_preset_follows_the_baseline_size_rule() -> None:
    sd = _sd() | {
        "big": torch.zeros(300, 300),
        "big_attn_scale": torch.zeros(70_000),
        "half": torch.zeros(5, dtype=torch.float16),
    }
    got = _labels(Policy.preset("int8"), sd)
    assert got["tok_emb.weight"] == "fp16"  # exactly 65,536 elements: kept (<=)
    assert got["blocks.0.attn_scale"] == "fp32" and got["skip_weights"] == "fp32"
    assert got["big"] == "int8" and got["big_attn_scale"] == "int8"  # control names only protect small tensors
    assert got["half"] == "exact" and got["counter"] == "exact"


def test_presets_on_real_shared_blocks_schema(neo_ptz) -> None:
    from golfpack.formats.legacy import dequantize_int8_ptz, read_int8_ptz

    sd = dequantize_int8_ptz(read_int8_ptz(neo_ptz))
    got = _labels(Policy.preset("int5mlp+int6attn+tok8"), sd)
    assert got["shared_blocks.0.mlp.fc.weight"] == "int5"
    assert got["shared_blocks.0.attn.c_q.weight"] == "int6"
    assert got["skip_weights"] == "fp16"


def test_first_match_wins_and_conditions() -> None:
    p = Policy(
        name="t",
        rules=(
            Rule(spec=TensorSpec.parse("int4"), match=("re:blocks\\.[0-9]+\\.mlp\\.fc\\.weight",), min_numel=8192),
            Rule(spec=TensorSpec.parse("int5"), match=("blocks.*",), ndim=(2,)),
            Rule(spec=TensorSpec.parse("bf16"), dtype=("bfloat16",)),
        ),
        default=TensorSpec.parse("fp32"),
    )
    got = _labels(p, _sd())
    assert got["blocks.0.mlp.fc.weight"] == "int4"
    assert got["blocks.0.attn.c_q.weight"] == "int5"
    assert got["blocks.0.resid_mix"] == "int5"  # no control protection unless a rule asks for it
    assert got["blocks.0.attn.q_gain"] == "fp32"  # 1-D: falls to the default
    assert got["tok_emb.weight"] == "bf16"
    assert got["counter"] == "exact"


def test_overrides_prepend_and_last_wins() -> None:
    base = Policy.preset("int6+tok8")
    p = base.with_overrides(["blocks.*.mlp.fc.weight=int5", "blocks.1.*=int4:mse", "tok_emb.weight=fp16"])
    got = _labels(p, _sd())
    assert got["blocks.0.mlp.fc.weight"] == "int5"
    assert got["blocks.1.mlp.fc.weight"] == "int4:mse"
    assert got["tok_emb.weight"] == "fp16"
    assert got["blocks.0.mlp.proj.weight"] == "int6"
    assert base.resolve(_sd())["blocks.0.mlp.fc.weight"].label() == "int6"  # the preset is unchanged
    for bad in ["blocks.*", "=int5", "x=int9", "x=float8", "x="]:
        with pytest.raises(GolfpackError, match="override|cannot parse|bits"):
            base.with_overrides([bad])


def test_to_dict_round_trip_replays_the_same_plan() -> None:
    for name in PRESETS:
        p = Policy.preset(name).with_overrides(["re:blocks\\.0\\..*=int3"])
        again = Policy.from_dict(json.loads(json.dumps(p.to_dict())))
        assert again.resolve(_sd()) == p.resolve(_sd())


def test_policy_files_toml_and_json(tmp_path) -> None:
    toml = tmp_path / "mine.toml"
    toml.write_text('base = "int6+tok8"\n[[rules]]\nmatch = ["blocks.*.mlp.*"]\nndim = 2\nspec = "int5:mse"\n')
    p = resolve_policy(str(toml))
    got = _labels(p, _sd())
    assert p.name == "mine"
    assert got["blocks.0.mlp.fc.weight"] == "int5:mse" and got["tok_emb.weight"] == "int8"
    js = tmp_path / "p.json"
    js.write_text(
        json.dumps(
            {
                "rules": [
                    {"match": "tok_emb.weight", "spec": "int7"},
                    {"ndim": [2], "control": False, "spec": "int4:absmax"},
                ],
                "default": "bf16",
            }
        )
    )
    got = _labels(resolve_policy(str(js), ["lm_head.weight=fp32"]), _sd())
    assert got["tok_emb.weight"] == "int7" and got["blocks.0.attn.c_q.weight"] == "int4:absmax"
    assert got["skip_weights"] == "bf16" and got["norm.bias"] == "bf16" and got["lm_head.weight"] == "fp32"


@pytest.mark.parametrize(
    "content,msg",
    [
        ("[[rules]]\nmatch='x'\n", "missing 'spec'"),
        ("[[rules]]\nspec='int6'\nsize=3\n", "unknown key"),
        ("[[rules]]\nspec='int11'\n", "bits must be"),
        ("[[rules]]\nspec='int6'\nmatch='re:('\n", "bad regex"),
        ("rules = [", "cannot parse"),
        ("base = 'nope'\n", "unknown policy"),
    ],
)
def test_bad_policy_files_give_clear_errors(tmp_path, content: str, msg: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(content)
    with pytest.raises(GolfpackError, match=msg):
        resolve_policy(str(f))


def test_unknown_policy_name_and_missing_file() -> None:
    with pytest.raises(GolfpackError, match="unknown policy 'int7'.*int6\\+tok8"):
        resolve_policy("int7")
    with pytest.raises(GolfpackError, match="not found"):
        resolve_policy("/nonexistent/policy.toml")


def test_real_nolanvild_plan(nolanvild_pt) -> None:
    sd = load_state_dict(nolanvild_pt)
    got = _labels(Policy.preset("int6+tok8"), sd)
    assert sum(v == "int6" for v in got.values()) == 18  # 6 matrices x 3 layers
    assert got["tok_emb.weight"] == "int8"
    assert {got[k] for k in got if "scale" in k or "mix" in k or "gain" in k or k == "skip_weights"} == {"fp16"}


@pytest.mark.parametrize("bad", ["false", 1, "yes"])
def test_rule_control_must_be_a_real_bool(bad) -> None:
    from golfpack.packer.policy import Rule

    with pytest.raises(GolfpackError, match="control must be true or false"):
        Rule.from_dict({"spec": "int6", "control": bad})
    assert Rule.from_dict({"spec": "int6", "control": False}).control is False
