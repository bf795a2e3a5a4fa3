"""Training: the challenge baseline's recipe (Muon + Adam, warmdown, torchrun DDP, QAT, EMA) -> raw checkpoints.

Public API: `TrainConfig`, `load_config`, `PRESETS`, `train` (returns a `TrainResult`).
Submodules are imported lazily so `import golfpack.trainer` stays cheap.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "load_config", "train"]


def __getattr__(name: str) -> Any:
    if name in ("PRESETS", "TrainConfig", "load_config"):
        from golfpack.trainer import config

        return getattr(config, name)
    if name in ("TrainResult", "train"):
        from golfpack.trainer import loop

        return getattr(loop, name)
    raise AttributeError(name)
