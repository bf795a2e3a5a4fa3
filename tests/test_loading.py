"""load_any: dispatch on content (not on the file name) for raw .pt, legacy .ptz and junk."""

from __future__ import annotations

import shutil

import pytest
import torch

from golfpack.errors import GolfpackError
from golfpack.formats.checkpoint import load_state_dict
from golfpack.loading import load_any, sniff


def test_dispatch_by_content_not_name(tmp_path, nolanvild_pt, nolanvild_ptz) -> None:
    a = tmp_path / "really_a_ptz.pt"
    shutil.copy(nolanvild_ptz, a)
    b = tmp_path / "really_a_pt.qg3"
    shutil.copy(nolanvild_pt, b)
    la, lb = load_any(a), load_any(b)
    assert la.kind == "int8ptz" and la.info["codec"] == "zlib"
    assert lb.kind == "raw"
    raw = load_state_dict(nolanvild_pt)
    assert all(torch.equal(lb.state_dict[k], v) for k, v in raw.items())
    assert la.config is not None and la.config.num_layers == 3 and la.config.mlp_hidden == 256
    assert load_any(a, activation="relu3").config.activation == "relu3"


def test_foreign_schema_loads_without_config(neo_ptz) -> None:
    lm = load_any(neo_ptz)
    assert lm.kind == "int8ptz" and lm.config is None
    assert sum(t.numel() for t in lm.state_dict.values()) == 4_200_464


def test_unknown_and_missing(tmp_path) -> None:
    assert sniff(b"hello") == "unknown" and sniff(b"PK\x03\x04rest") == "raw"
    j = tmp_path / "j.bin"
    j.write_bytes(b"hello there")
    with pytest.raises(GolfpackError, match="unrecognised"):
        load_any(j)
    with pytest.raises(GolfpackError, match="not found"):
        load_any(tmp_path / "none.qg3")
