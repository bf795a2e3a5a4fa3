"""Raw checkpoints: `torch.save(model.state_dict())` files such as `final_model.pt`.

Loading is always `weights_only=True` (no pickle code runs). Rebuilding a model config from the
keys and shapes is the model layer's job (`golfpack.loading.infer_config`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from golfpack.errors import GolfpackError

# Prefixes that wrappers add around the real state dict keys.
_STRIP_PREFIXES = ("_orig_mod.", "module.")
# Container keys some scripts use to nest the state dict.
_NESTED_KEYS = ("model_state_dict", "state_dict", "model")

def load_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Load a raw checkpoint safely and return a flat {name: tensor} dict on CPU."""
    path = Path(path)
    if not path.is_file():
        raise GolfpackError(f"checkpoint {path}: file not found")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for bad files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GolfpackError(f"checkpoint {path}: cannot be read as a torch.save state dict ({first})") from None
    return normalize_state_dict(obj, source=str(path))


def normalize_state_dict(obj: Any, source: str = "state dict") -> dict[str, Tensor]:
    """Unwrap nested containers and compile/DDP prefixes; require a flat dict of tensors."""
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:
            if key in obj and isinstance(obj[key], dict) and not isinstance(obj[key], Tensor):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise GolfpackError(f"{source}: expected a non-empty dict of tensors, got {type(obj).__name__}")
    out: dict[str, Tensor] = {}
    for k, v in obj.items():
        if not isinstance(v, Tensor):
            raise GolfpackError(f"{source}: entry {k!r} is {type(v).__name__}, not a tensor")
        name = str(k)
        for p in _STRIP_PREFIXES:
            if name.startswith(p):
                name = name[len(p) :]
        out[name] = v.detach().cpu()
    return out
