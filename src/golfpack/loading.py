"""Load anything a user may hand us - QGv3 artifact, legacy .ptz, raw .pt - as one state dict.

Dispatch is on the file's first bytes, never on its name: QGv3 magic -> our format; a zlib/lzma/zstd
stream -> legacy compressed torch.save (the baseline's int8 container, or a plain state dict); a zip
("PK") -> a raw `torch.save` checkpoint. Evaluator, verify and pack all fresh-load through here.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from golfpack.errors import FormatError, GolfpackError, UsageError
from golfpack.model import ModelConfig


@dataclass
class LoadedModel:
    """A loaded model of any provenance."""

    state_dict: dict[str, Tensor]  # name -> tensor in its original dtype, CPU
    config: ModelConfig | None  # stored (QGv3) or inferred from shapes; None if the schema is foreign
    kind: str  # "raw" | "int8ptz" | "qgv3"
    artifact: Any = None  # the decoded QGv3Artifact (kind == "qgv3"), for verify/inspect
    info: dict[str, Any] = field(default_factory=dict)  # e.g. {"codec": "zlib"} for legacy files
    config_source: str = ""  # "artifact" (QGv3 header) | "inferred" (from shapes) | "" (config is None)


def sniff(head: bytes) -> str:
    """'qgv3' | 'legacy' | 'raw' | 'unknown' from the first bytes of a file."""
    from golfpack.formats.legacy import _XZ_MAGIC, _ZSTD_MAGIC, looks_like_zlib

    magic = _qgv3_magic()
    if magic is not None and head.startswith(magic):
        return "qgv3"
    if head.startswith(b"PK\x03\x04"):
        return "raw"
    if head.startswith(_XZ_MAGIC) or head.startswith(_ZSTD_MAGIC) or looks_like_zlib(head[:2]):
        return "legacy"
    return "unknown"


def _qgv3_magic() -> bytes | None:
    try:
        from golfpack.formats.qgv3 import MAGIC
    except ImportError:  # format module not built yet: QGv3 files then read as 'unknown'
        return None
    return bytes(MAGIC)


def load_any(
    path: str | os.PathLike[str],
    *,
    num_heads: int | None = None,
    activation: str | None = None,
) -> LoadedModel:
    """Load a QGv3 / legacy .ptz / raw .pt file. `num_heads`/`activation` override the config."""
    from golfpack.formats.checkpoint import normalize_state_dict

    if num_heads is not None and num_heads <= 0:
        raise UsageError(f"num_heads must be positive, got {num_heads}", param="num_heads")
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: file not found")
    data = p.read_bytes()
    kind = sniff(data[:16])
    info: dict[str, Any] = {"bytes": len(data)}
    artifact = None
    config: ModelConfig | None = None
    if kind == "qgv3":
        from golfpack.formats.qgv3 import decode_qgv3

        try:
            artifact = decode_qgv3(data)
        except GolfpackError:
            raise
        except ValueError as e:
            raise FormatError(f"invalid QGv3 artifact ({e})", path=p) from None
        if artifact.config is not None:
            changes = {k: v for k, v in (("num_heads", num_heads), ("activation", activation)) if v is not None}
            try:
                config = ModelConfig.from_dict(artifact.config).replace(**changes)
            except (TypeError, ValueError) as e:
                raise FormatError(f"stored model config is invalid ({e})", path=p) from None
            # against the tensors' shapes (from the header) before a single tensor is rebuilt
            try:
                check_shapes({r.name: tuple(r.shape) for r in artifact.records}, config)
            except FormatError as e:
                raise FormatError(f"stored model config does not match the tensors: {e.detail}", path=p) from None
        sd = artifact.state_dict()
    elif kind == "legacy":
        from golfpack.formats.legacy import decompress_container, dequantize_int8_ptz, is_int8_container, load_container

        raw, codec = decompress_container(data, str(p))
        info["codec"] = codec
        obj = load_container(raw, p)
        if is_int8_container(obj):
            sd, kind = dequantize_int8_ptz(obj), "int8ptz"
        else:
            sd, kind = normalize_state_dict(obj, str(p)), "raw"
    elif kind == "raw":
        from golfpack.formats.checkpoint import load_state_dict

        sd = load_state_dict(p)
    else:
        raise FormatError("not a QGv3 artifact, legacy .ptz or torch checkpoint (unrecognised first bytes)", path=p, offset=0)
    source = "artifact" if config is not None else ""
    if config is None:
        try:
            config, source = infer_config(sd, num_heads=num_heads, activation=activation), "inferred"
        except GolfpackError:
            config = None  # foreign schema: still loadable as tensors (pack/inspect), not as our GPT
    return LoadedModel(state_dict=sd, config=config, kind=kind, artifact=artifact, info=info, config_source=source)


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
        raise FormatError(
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
        raise FormatError(
            f"state dict has {len(unknown)} key(s) the baseline GPT family does not have: "
            + ", ".join(sorted(unknown)[:12])
            + (" ..." if len(unknown) > 12 else "")
        )
    num_layers = len(layer_ids)
    if num_layers == 0 or layer_ids != set(range(num_layers)):
        raise FormatError(f"state dict blocks are not numbered 0..N-1 (found {sorted(layer_ids)})")

    kv_dim, _ = _shape2(sd, "blocks.0.attn.c_k.weight")
    hidden, _ = _shape2(sd, "blocks.0.mlp.fc.weight")
    if num_heads is None:
        if "blocks.0.attn.q_gain" not in sd:
            raise UsageError("cannot infer the head count (no q_gain): pass num_heads", param="num_heads")
        num_heads = int(sd["blocks.0.attn.q_gain"].numel())
        if num_heads == 0:
            raise UsageError("blocks.0.attn.q_gain is empty, so the head count cannot be inferred: pass num_heads", param="num_heads")
        given = f"num_heads {num_heads} (from q_gain)"
    else:
        if num_heads <= 0:
            raise UsageError(f"num_heads must be positive, got {num_heads}", param="num_heads")
        given = f"num_heads {num_heads}"
    # Checked here, before any division, so a bad count is a clear message rather than a ZeroDivisionError.
    if dim % num_heads:
        raise UsageError(f"model_dim {dim} is not divisible by {given}: pass a num_heads that divides {dim}", param="num_heads")
    head_dim = dim // num_heads
    if kv_dim == 0 or kv_dim % head_dim:
        raise UsageError(f"c_k rows {kv_dim} are not a positive multiple of head_dim {head_dim} ({dim} / {given})", param="num_heads")
    num_kv_heads = kv_dim // head_dim
    if num_heads % num_kv_heads:
        raise UsageError(
            f"{num_kv_heads} kv heads (c_k rows {kv_dim} / head_dim {head_dim}) do not divide {given}: "
            "pass the num_heads the model was trained with",
            param="num_heads",
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
        raise FormatError(str(e)) from None
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
    check_shapes({k: tuple(t.shape) for k, t in sd.items()}, cfg)


def check_shapes(shapes: dict[str, tuple[int, ...]], cfg: ModelConfig) -> None:
    """check_state_dict on names and shapes alone (so a stored config is checked before any tensor is built)."""
    # ModelConfig bounds num_layers; still, a config asking for more blocks than there are tensors
    # cannot match, and saying so costs nothing
    if cfg.num_layers > len(shapes):
        raise FormatError(f"config has {cfg.num_layers} layers but there are only {len(shapes)} tensors")
    want = expected_shapes(cfg)
    problems = [f"missing {k} {list(s)}" for k, s in want.items() if k not in shapes]
    problems += [f"unexpected {k}" for k in shapes if k not in want]
    problems += [f"{k} has shape {list(shapes[k])}, expected {list(s)}" for k, s in want.items() if k in shapes and shapes[k] != s]
    if problems:
        raise FormatError(
            f"checkpoint does not match the model config ({len(problems)} problem(s)): "
            + "; ".join(problems[:10])
            + (" ..." if len(problems) > 10 else "")
        )


def _shape2(sd: dict[str, Tensor], key: str) -> tuple[int, int]:
    if key not in sd:
        raise FormatError(f"state dict is missing {key!r}")
    t = sd[key]
    if t.ndim != 2:
        raise FormatError(f"{key} should be 2-D, has shape {list(t.shape)}")
    return int(t.shape[0]), int(t.shape[1])


__all__ = ["LoadedModel", "check_shapes", "check_state_dict", "expected_shapes", "infer_config", "load_any", "sniff"]
