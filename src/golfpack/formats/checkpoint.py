"""Raw checkpoints: `torch.save(model.state_dict())` files such as `final_model.pt`.

Loading is always `weights_only=True` (no pickle code runs). `infer_config` rebuilds the
`ModelConfig` from key names and shapes; what shapes cannot tell (the MLP activation, and the
head count when `q_gain` is absent) comes from explicit overrides.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from golfpack.errors import GolfpackError
from golfpack.model import ModelConfig

# Prefixes that wrappers add around the real state dict keys.
_STRIP_PREFIXES = ("_orig_mod.", "module.")
# Container keys some scripts use to nest the state dict.
_NESTED_KEYS = ("model_state_dict", "state_dict", "model")

_BLOCK_PARAMS = {
    "attn.c_q.weight",
    "attn.c_k.weight",
    "attn.c_v.weight",
    "attn.proj.weight",
    "attn.q_gain",
    "mlp.fc.weight",
    "mlp.proj.weight",
    "attn_scale",
    "mlp_scale",
    "resid_mix",
}
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


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


def infer_config(
    state_dict: dict[str, Tensor],
    *,
    num_heads: int | None = None,
    activation: str | None = None,
    **overrides: Any,
) -> ModelConfig:
    """Infer the ModelConfig from key names and shapes; raise GolfpackError listing any mismatch."""
    sd = state_dict
    if "tok_emb.weight" not in sd:
        raise GolfpackError(
            "state dict has no 'tok_emb.weight': not a baseline-family GPT checkpoint "
            f"(keys start with: {', '.join(sorted(sd)[:6])})"
        )
    vocab, dim = _shape2(sd, "tok_emb.weight")

    layer_ids: set[int] = set()
    unknown: list[str] = []
    for k in sd:
        m = _BLOCK_RE.match(k)
        if m and m.group(2) in _BLOCK_PARAMS:
            layer_ids.add(int(m.group(1)))
        elif k not in {"tok_emb.weight", "skip_weights", "lm_head.weight"}:
            unknown.append(k)
    if unknown:
        raise GolfpackError(
            f"state dict has {len(unknown)} key(s) the baseline GPT family does not have: "
            + ", ".join(sorted(unknown)[:12])
            + (" ..." if len(unknown) > 12 else "")
        )
    num_layers = len(layer_ids)
    if num_layers == 0 or layer_ids != set(range(num_layers)):
        raise GolfpackError(f"state dict blocks are not numbered 0..N-1 (found {sorted(layer_ids)})")

    kv_dim, _ = _shape2(sd, "blocks.0.attn.c_k.weight")
    hidden, _ = _shape2(sd, "blocks.0.mlp.fc.weight")
    if num_heads is None:
        if "blocks.0.attn.q_gain" not in sd:
            raise GolfpackError("cannot infer the head count (no q_gain): pass --num-heads")
        num_heads = int(sd["blocks.0.attn.q_gain"].numel())
        if num_heads == 0:
            raise GolfpackError("blocks.0.attn.q_gain is empty, so the head count cannot be inferred: pass --num-heads")
        given = f"num_heads {num_heads} (from q_gain)"
    else:
        if num_heads <= 0:
            raise GolfpackError(f"--num-heads must be positive, got {num_heads}")
        given = f"--num-heads {num_heads}"
    # Checked here, before any division, so a bad count is a clear message rather than a ZeroDivisionError.
    if dim % num_heads:
        raise GolfpackError(f"model_dim {dim} is not divisible by {given}: pass a --num-heads that divides {dim}")
    head_dim = dim // num_heads
    if kv_dim == 0 or kv_dim % head_dim:
        raise GolfpackError(f"c_k rows {kv_dim} are not a positive multiple of head_dim {head_dim} ({dim} / {given})")
    num_kv_heads = kv_dim // head_dim
    if num_heads % num_kv_heads:
        raise GolfpackError(
            f"{num_kv_heads} kv heads (c_k rows {kv_dim} / head_dim {head_dim}) do not divide {given}: "
            "pass the --num-heads the model was trained with"
        )

    fields: dict[str, Any] = dict(
        vocab_size=vocab,
        num_layers=num_layers,
        model_dim=dim,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        mlp_hidden=hidden,
        tie_embeddings="lm_head.weight" not in sd,
        skip_weights="skip_weights" in sd,
    )
    if activation is not None:
        fields["activation"] = activation
    fields.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = ModelConfig(**fields)
    except (TypeError, ValueError) as e:
        raise GolfpackError(str(e)) from None
    check_state_dict(sd, cfg)
    return cfg


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every key and shape a checkpoint of this config must have."""
    d, kv, h = cfg.model_dim, cfg.num_kv_heads * cfg.head_dim, cfg.mlp_hidden
    shapes: dict[str, tuple[int, ...]] = {"tok_emb.weight": (cfg.vocab_size, d)}
    if cfg.skip_weights:
        shapes["skip_weights"] = (cfg.num_skip_weights, d)
    for i in range(cfg.num_layers):
        p = f"blocks.{i}."
        shapes.update(
            {
                p + "attn.c_q.weight": (d, d),
                p + "attn.c_k.weight": (kv, d),
                p + "attn.c_v.weight": (kv, d),
                p + "attn.proj.weight": (d, d),
                p + "attn.q_gain": (cfg.num_heads,),
                p + "mlp.fc.weight": (h, d),
                p + "mlp.proj.weight": (d, h),
                p + "attn_scale": (d,),
                p + "mlp_scale": (d,),
                p + "resid_mix": (2, d),
            }
        )
    if not cfg.tie_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, d)
    return shapes


def check_state_dict(sd: dict[str, Tensor], cfg: ModelConfig) -> None:
    """Raise GolfpackError naming every missing, unexpected or mis-shaped key."""
    want = expected_shapes(cfg)
    problems = [f"missing {k} {list(s)}" for k, s in want.items() if k not in sd]
    problems += [f"unexpected {k}" for k in sd if k not in want]
    problems += [
        f"{k} has shape {list(sd[k].shape)}, expected {list(s)}"
        for k, s in want.items()
        if k in sd and tuple(sd[k].shape) != s
    ]
    if problems:
        raise GolfpackError(
            f"checkpoint does not match the model config ({len(problems)} problem(s)): "
            + "; ".join(problems[:10])
            + (" ..." if len(problems) > 10 else "")
        )


def _shape2(sd: dict[str, Tensor], key: str) -> tuple[int, int]:
    if key not in sd:
        raise GolfpackError(f"state dict is missing {key!r}")
    t = sd[key]
    if t.ndim != 2:
        raise GolfpackError(f"{key} should be 2-D, has shape {list(t.shape)}")
    return int(t.shape[0]), int(t.shape[1])
