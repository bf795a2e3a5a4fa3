"""`pack` warns, naming the tensor and rows, when a spec's scale floor swallows most of a tensor's range."""

from __future__ import annotations

import json

import torch
from click.testing import CliRunner

from golfpack.cli import main
from golfpack.formats.spec import TensorSpec
from golfpack.packer.pack import pack_state_dict
from golfpack.packer.policy import Policy
from golfpack.packer.quantize import floor_warning, floor_warnings


def _sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    small = torch.randn(32, 64, generator=g) * 0.02  # trained-looking rows: absmax ~0.06-0.1
    small[3] *= 40  # one row with range above the floor's clip of 1.0
    return {"blocks.0.mlp.fc.weight": small, "blocks.0.attn.proj.weight": torch.randn(32, 64, generator=g),
            "blocks.0.attn_scale": torch.ones(64)}


def test_floor_warning_names_the_tensor_and_rows() -> None:
    sd = _sd()
    w = floor_warning("blocks.0.mlp.fc.weight", sd["blocks.0.mlp.fc.weight"], TensorSpec.parse("int6"))
    assert w is not None and w.startswith("blocks.0.mlp.fc.weight: int6 floors the scale at 1/31")
    assert "31 of 32 rows" in w and "rows 0, 1, 2, 4, 5, 6, ..." in w and "int6:sd12" in w
    # large-range rows, floor-free rules, per-tensor and passthrough specs: no warning
    assert floor_warning("a", sd["blocks.0.attn.proj.weight"], TensorSpec.parse("int6")) is None
    for spec in ("int6:mse", "int6:sd12", "int6:g64", "int6:absmax", "int6:hmse", "fp16"):
        assert floor_warning("a", sd["blocks.0.mlp.fc.weight"], TensorSpec.parse(spec)) is None
    assert floor_warning("v", torch.full((64,), 0.01), TensorSpec.parse("int6")) is None


def test_pack_reports_and_the_cli_prints_the_warning(tmp_path) -> None:
    sd = _sd()
    pol = Policy.from_dict({"rules": [{"match": "*.weight", "spec": "int6"}], "default": "fp16"})
    art = pack_state_dict(sd, pol)
    assert art.warnings == floor_warnings(sd, pol.resolve(sd)) and len(art.warnings) == 1
    assert art.report()["warnings"] == art.warnings
    assert pack_state_dict(sd, Policy.from_dict({"rules": [{"match": "*.weight", "spec": "int6:sd12"}]})).warnings == []
    src = tmp_path / "m.pt"
    torch.save(sd, src)
    res = CliRunner().invoke(main, ["pack", str(src), "--dry-run", "--no-config", "--policy", "int6+tok8"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("warning: blocks.0.mlp.fc.weight: int6 floors the scale")
    res = CliRunner().invoke(main, ["pack", str(src), "--dry-run", "--no-config", "--policy", "int6+tok8", "--json"])
    assert json.loads(res.output)["warnings"][0].startswith("blocks.0.mlp.fc.weight:")
