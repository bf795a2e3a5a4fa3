"""golfpack: turn a trained small GPT into the best-scoring artifact under a hard byte cap.

Data path: state dict -> policy -> quantized tensors -> grouped streams -> codec -> bytes
-> (fresh process) -> tensors -> model -> score.  The public API (docs/api.md):

    import golfpack as gp
    art = gp.pack("final_model.pt", "int6+tok8")
    art.save("model.qg3")
    gp.verify("model.qg3", against="final_model.pt", val="fineweb_val_*.bin", tokenizer="fineweb_1024_bpe.model")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from golfpack._version import __version__
from golfpack.errors import BudgetError, DataError, FormatError, GolfpackError, UsageError

# The API pulls in torch; it is imported on first use so `golfpack --help` and `import golfpack.errors`
# stay fast. Type checkers see the real names.
_API = {
    "load": "golfpack.api", "pack": "golfpack.api", "evaluate": "golfpack.api", "search": "golfpack.api",
    "verify": "golfpack.api", "train": "golfpack.api", "VerifyReport": "golfpack.api",
    "Artifact": "golfpack.packer.pack", "LoadedModel": "golfpack.loading", "EvalResult": "golfpack.evaluator.api",
    "Policy": "golfpack.packer.policy", "TensorSpec": "golfpack.formats.spec",
    "SearchConfig": "golfpack.budget", "SearchResult": "golfpack.budget",
    "TrainConfig": "golfpack.trainer.config", "TrainResult": "golfpack.trainer.loop",
}

if TYPE_CHECKING:
    from golfpack.api import VerifyReport, evaluate, load, pack, search, train, verify
    from golfpack.budget import SearchConfig, SearchResult
    from golfpack.evaluator.api import EvalResult
    from golfpack.formats.spec import TensorSpec
    from golfpack.loading import LoadedModel
    from golfpack.packer.pack import Artifact
    from golfpack.packer.policy import Policy
    from golfpack.trainer.config import TrainConfig
    from golfpack.trainer.loop import TrainResult


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'golfpack' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))


__all__ = [
    "Artifact", "BudgetError", "DataError", "EvalResult", "FormatError", "GolfpackError", "LoadedModel", "Policy",
    "SearchConfig", "SearchResult", "TensorSpec", "TrainConfig", "TrainResult", "UsageError", "VerifyReport",
    "__version__", "evaluate", "load", "pack", "search", "train", "verify",
]
