"""Load anything a user may hand us - QGv3 artifact, legacy .ptz, raw .pt - as one state dict.

Dispatch is on the file's first bytes, never on its name: QGv3 magic -> our format; a zlib/lzma/zstd
stream -> legacy compressed torch.save (the baseline's int8 container, or a plain state dict); a zip
("PK") -> a raw `torch.save` checkpoint. Evaluator, verify and pack all fresh-load through here.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from golfpack.errors import GolfpackError
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
    from golfpack.formats.checkpoint import infer_config, normalize_state_dict

    if num_heads is not None and num_heads <= 0:
        raise GolfpackError(f"--num-heads must be positive, got {num_heads}")
    p = Path(path)
    if not p.is_file():
        raise GolfpackError(f"{p}: file not found")
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
            raise GolfpackError(f"{p}: invalid QGv3 artifact ({e})") from None
        sd = artifact.state_dict()
        if artifact.config:
            changes = {k: v for k, v in (("num_heads", num_heads), ("activation", activation)) if v is not None}
            try:
                config = ModelConfig.from_dict(dict(artifact.config)).replace(**changes)
            except (TypeError, ValueError) as e:
                raise GolfpackError(f"{p}: stored model config is invalid ({e})") from None
    elif kind == "legacy":
        from golfpack.formats.legacy import decompress_container, dequantize_int8_ptz, is_int8_container

        raw, codec = decompress_container(data, str(p))
        info["codec"] = codec
        try:
            obj = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:100]
            raise GolfpackError(f"{p}: decompressed data is not a torch.save object ({first})") from None
        if is_int8_container(obj):
            sd, kind = dequantize_int8_ptz(obj), "int8ptz"
        else:
            sd, kind = normalize_state_dict(obj, str(p)), "raw"
    elif kind == "raw":
        from golfpack.formats.checkpoint import load_state_dict

        sd = load_state_dict(p)
    else:
        raise GolfpackError(f"{p}: not a QGv3 artifact, legacy .ptz or torch checkpoint (unrecognised first bytes)")
    source = "artifact" if config is not None else ""
    if config is None:
        try:
            config, source = infer_config(sd, num_heads=num_heads, activation=activation), "inferred"
        except GolfpackError:
            config = None  # foreign schema: still loadable as tensors (pack/inspect), not as our GPT
    return LoadedModel(state_dict=sd, config=config, kind=kind, artifact=artifact, info=info, config_source=source)


__all__ = ["LoadedModel", "load_any", "sniff"]
