"""The public API: the whole job in a few calls. `import golfpack` re-exports everything here.

    import golfpack as gp
    model = gp.load("final_model.pt")                      # .pt, legacy .ptz or .qg3
    art = gp.pack(model, "int6+tok8")                      # -> Artifact (bytes + what went in)
    art.save("model.qg3")
    print(gp.evaluate("model.qg3", val="fineweb_val_*.bin", tokenizer="fineweb_1024_bpe.model").val_bpb)
    print(gp.verify("model.qg3", against="final_model.pt").ok)

Every function raises a `GolfpackError` subclass on input it cannot use (`UsageError` for a bad
argument, `FormatError` for a bad file, `BudgetError` for an over-cap artifact, `DataError` for bad
tokens or text); anything else is a bug. The CLIs are thin layers over these functions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from golfpack.errors import BudgetError, UsageError
from golfpack.evaluator.api import EvalResult
from golfpack.formats.spec import TensorSpec
from golfpack.loading import LoadedModel, load_any
from golfpack.packer.pack import DEFAULT_BUDGET, DEFAULT_CODEC, Artifact
from golfpack.packer.policy import Policy, resolve_policy

if TYPE_CHECKING:
    from golfpack.budget import SearchConfig, SearchResult
    from golfpack.trainer.config import TrainConfig
    from golfpack.trainer.loop import TrainResult

PathLike = str | os.PathLike[str]


def load(path: PathLike, *, num_heads: int | None = None, activation: str | None = None) -> LoadedModel:
    """Load a raw `.pt`, a legacy `.ptz` or a QGv3 `.qg3` file (dispatch on content, never on the name).

    The result holds the state dict in its original dtypes and, for the baseline family, its config
    (stored in a QGv3 header, else inferred from shapes; `num_heads`/`activation` override what shapes
    cannot tell)."""
    return load_any(path, num_heads=num_heads, activation=activation)


def _policy(policy: str | Policy, overrides: list[str] | tuple[str, ...]) -> Policy:
    if isinstance(policy, Policy):
        return policy.with_overrides(list(overrides)) if overrides else policy
    if not isinstance(policy, (str, os.PathLike)):
        raise UsageError(f"policy must be a preset name, a policy file path or a Policy, got {type(policy).__name__}",
                         param="policy")
    return resolve_policy(os.fspath(policy), overrides)


def pack(
    model: PathLike | LoadedModel,
    policy: str | Policy = "int6+tok8",
    *,
    codec: str = DEFAULT_CODEC,
    overrides: list[str] | tuple[str, ...] = (),
    calib: str | None = None,
    tokenizer: PathLike | None = None,
    budget: int | None = None,
    code: list[PathLike] | tuple[PathLike, ...] = (),
    progress: bool | None = False,
    model_code: PathLike | None = None,
) -> Artifact:
    """Quantize and compress `model` with `policy` (a preset name such as "int6+tok8", a .toml/.json policy
    file, or a Policy) into an in-memory Artifact; `.save(path)` writes it.

    `overrides` are `PATTERN=SPEC` rules on top of the policy; `calib`/`tokenizer` give calibration tokens
    for `+gptq` specs; with `budget`, the artifact plus the `code` files must fit it (BudgetError if not).
    `model_code`: 'FILE.py[:NAME]', your model code for a model outside the baseline family (docs/models.md):
    it runs the `+gptq` calibration forwards and is named in the header.
    """
    from golfpack.packer.pack import count_code_bytes, pack_file, pack_loaded

    pol = _policy(policy, overrides)
    tok = None if tokenizer is None else os.fspath(tokenizer)
    cap = DEFAULT_BUDGET if budget is None else int(budget)
    codes = [os.fspath(c) for c in code]
    code_path = None if model_code is None else os.fspath(model_code)
    if isinstance(model, LoadedModel):
        from golfpack.adapters import load_adapter

        code_bytes, code_files = count_code_bytes(codes)
        ad = load_adapter(code_path)
        art = pack_loaded(model.state_dict, model.config, pol, meta={"source_kind": model.kind, **ad.meta()},
                          codec=codec, overrides=overrides, calib=calib, tokenizer=tok, model=ad, progress=progress)
        art.budget, art.code_bytes, art.code_files = cap, code_bytes, code_files
    elif isinstance(model, (str, os.PathLike)):
        # dry_run: the same code path as `golfpack pack`, minus the write (the caller saves)
        art = pack_file(model, None, policy=pol, codec=codec, budget=cap, code=codes, dry_run=True,
                        require_config=False, overrides=overrides, calib=calib, tokenizer=tok, progress=progress,
                        model=code_path)
    else:
        raise UsageError(f"model must be a path or a LoadedModel (from golfpack.load), got {type(model).__name__}",
                         param="model")
    if budget is not None and art.total_bytes > art.budget:
        raise BudgetError(f"over budget: model {art.model_bytes:,} + code {art.code_bytes:,} = {art.total_bytes:,} "
                          f"bytes > {art.budget:,} by {-art.headroom:,} (use a smaller policy, or search)")
    return art


def evaluate(
    model: PathLike | Artifact | LoadedModel,
    *,
    val: str,
    tokenizer: PathLike,
    seq_len: int = 1024,
    stride: int | None = None,
    max_tokens: int | None = None,
    batch_size: int | None = None,
    device: str = "cpu",
    progress: bool | None = False,
    model_code: PathLike | None = None,
) -> EvalResult:
    """val_loss / val_bpb of a checkpoint or artifact on the val shards matching `val`, with the challenge's
    byte accounting. `stride=None` is the reference non-overlapping eval; a stride < seq_len scores each
    target once with more context (sliding window). An in-memory Artifact is scored as a fresh load of its
    bytes would be. `model_code`: 'FILE.py[:NAME]', your model code (docs/models.md)."""
    import tempfile

    from golfpack.evaluator.api import DEFAULT_BATCH_SIZE, evaluate_path

    kw: dict[str, Any] = dict(val=val, tokenizer=tokenizer, seq_len=seq_len, stride=stride, max_tokens=max_tokens,
                              device=device, batch_size=DEFAULT_BATCH_SIZE if batch_size is None else batch_size,
                              progress=progress, model=None if model_code is None else os.fspath(model_code))
    if isinstance(model, Artifact):
        with tempfile.TemporaryDirectory() as tmp:
            return evaluate_path(model.save(Path(tmp) / "artifact.qg3"), **kw)
    if isinstance(model, LoadedModel):
        return _evaluate_loaded(model, **kw)
    if isinstance(model, (str, os.PathLike)):
        return evaluate_path(model, **kw)
    raise UsageError(f"model must be a path, an Artifact or a LoadedModel, got {type(model).__name__}", param="model")


def _evaluate_loaded(lm: LoadedModel, **kw: Any) -> EvalResult:
    from golfpack.adapters import load_adapter
    from golfpack.evaluator.api import build_luts, model_vocab_size
    from golfpack.evaluator.api import evaluate as evaluate_model
    from golfpack.evaluator.dist import resolve_device
    from golfpack.formats.shards import load_tokens

    ad = load_adapter(kw["model"])
    if ad.is_baseline and lm.config is None:
        raise UsageError("this state dict is not a baseline-family model (no config could be inferred): "
                         "pass model_code='FILE.py[:NAME]' with its own model code (docs/models.md)", param="model_code")
    dev = resolve_device(kw["device"])
    model = ad.build(lm.state_dict, lm.config if ad.is_baseline else None, device=dev)
    vocab = model_vocab_size(model)
    assert vocab is not None, "an adapter-built model always knows its vocab (probed at build time)"
    luts = build_luts(kw["tokenizer"], vocab)
    tokens = load_tokens(kw["val"], kw["max_tokens"])
    return evaluate_model(model, tokens, luts, seq_len=kw["seq_len"], stride=kw["stride"],
                          batch_size=kw["batch_size"], device=dev, progress=kw["progress"])


@dataclass(frozen=True)
class VerifyReport:
    """What a fresh-process `verify` found. `ok` is True when `problems` is empty."""

    path: str  # the artifact verified
    kind: str  # "qgv3" | "int8ptz" | "raw"
    bytes: int  # file size
    tensors: int  # tensors loaded
    params: int  # elements over all tensors
    ok: bool  # checksums, digests and (with `against`) key sets and integer tensors all agree
    problems: tuple[str, ...]  # one line per failed check
    digests_checked: int  # per-tensor sha256 digests compared (QGv3 only)
    max_abs_err: float | None  # largest |artifact - against| over float tensors (with `against`)
    val_bpb: float | None  # the artifact's val_bpb after the fresh load (with `val`)
    val_bpb_raw: float | None  # the `against` checkpoint's val_bpb (with `val` and `against`)
    val_bpb_gap: float | None  # val_bpb - val_bpb_raw
    per_tensor: tuple[dict[str, Any], ...] = ()  # name, shape, dtype, spec, digest_ok, errors vs `against`
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the child's full report (what --json prints)

    @classmethod
    def from_dict(cls, rep: dict[str, Any]) -> VerifyReport:
        post, pre = rep.get("post") or {}, rep.get("pre") or {}
        return cls(path=rep["artifact"], kind=rep["kind"], bytes=int(rep["bytes"]), tensors=int(rep["tensors"]),
                   params=int(rep["params"]), ok=bool(rep["ok"]), problems=tuple(rep.get("problems", ())),
                   digests_checked=int(rep.get("digests_checked", 0)), max_abs_err=rep.get("max_abs_err"),
                   val_bpb=post.get("val_bpb"), val_bpb_raw=pre.get("val_bpb"), val_bpb_gap=rep.get("val_bpb_gap"),
                   per_tensor=tuple(rep.get("per_tensor", ())), raw=rep)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.raw)


def verify(
    artifact: PathLike | Artifact,
    *,
    against: PathLike | None = None,
    val: str | None = None,
    tokenizer: PathLike | None = None,
    seq_len: int = 1024,
    stride: int | None = None,
    max_tokens: int | None = None,
    device: str = "cpu",
    timeout: float | None = None,
    model_code: PathLike | None = None,
) -> VerifyReport:
    """Load `artifact` in a fresh Python process, as the challenge does: checksums, every tensor exactly as
    packed, (with `against`) the error vs the source checkpoint, and (with `val` and `tokenizer`) the score.
    `model_code`: 'FILE.py[:NAME]', your model code; the fresh process imports it (and says if it changed)."""
    import tempfile

    from golfpack.evaluator.verify import EvalOptions, verify_artifact

    if (val is None) != (tokenizer is None):
        raise UsageError("pass both val and tokenizer to score the artifact, or neither",
                         param="tokenizer" if tokenizer is None else "val")
    ev = None if val is None else EvalOptions(val=val, tokenizer=os.fspath(tokenizer), seq_len=seq_len,  # type: ignore[arg-type]
                                              stride=stride, max_tokens=max_tokens, device=device)
    if isinstance(artifact, Artifact):
        with tempfile.TemporaryDirectory() as tmp:
            p = artifact.save(Path(tmp) / "artifact.qg3")
            return VerifyReport.from_dict(verify_artifact(p, against=against, eval_options=ev, timeout=timeout, model=model_code))
    if not isinstance(artifact, (str, os.PathLike)):
        raise UsageError(f"artifact must be a path or an Artifact, got {type(artifact).__name__}", param="artifact")
    return VerifyReport.from_dict(verify_artifact(artifact, against=against, eval_options=ev, timeout=timeout, model=model_code))


def search(model: PathLike, config: SearchConfig | None = None, *, model_code: PathLike | None = None,
           **options: Any) -> SearchResult:
    """The best per-tensor layout under `config.budget` bytes (code included): a SearchResult whose
    `.artifact` is the packed winner and `.save(path)` writes it. `options` build a SearchConfig when
    `config` is None (e.g. `budget=16_000_000, calib="fineweb_train_*.bin"`). `model_code`: 'FILE.py[:NAME]',
    your model code for a model outside the baseline family (docs/models.md)."""
    from golfpack.budget import SearchConfig, run_search

    if config is None:
        config = SearchConfig(**options)
    elif options:
        raise UsageError("pass either a SearchConfig or keyword options, not both", param="config")
    return run_search(os.fspath(model), config, model=None if model_code is None else os.fspath(model_code))


def train(config: TrainConfig | PathLike, *, overrides: list[str] | tuple[str, ...] = (),
          progress: bool | None = False) -> TrainResult:
    """Train with the challenge baseline's recipe. `config` is a TrainConfig, a preset name ("tiny",
    "baseline") or a .toml file; `overrides` are `key=value` texts on top (a TrainConfig takes none:
    use dataclasses.replace)."""
    from golfpack.trainer.config import TrainConfig, load_config
    from golfpack.trainer.loop import train as run_train

    if isinstance(config, TrainConfig):
        if overrides:
            raise UsageError("overrides apply to a preset or config file; for a TrainConfig use dataclasses.replace",
                             param="overrides")
        cfg = config
    else:
        cfg = load_config(os.fspath(config), overrides=tuple(overrides))
    return run_train(cfg, echo=None, progress=progress)


__all__ = ["Artifact", "EvalResult", "LoadedModel", "Policy", "TensorSpec", "VerifyReport", "evaluate", "load",
           "pack", "search", "train", "verify"]
