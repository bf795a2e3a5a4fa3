"""Score a model on val tokens: val_loss (nats/token) and val_bpb (bits per UTF-8 byte).

`evaluate` runs a window plan (see `windows`) in batches, sums per-token NLL (fp32 from the model,
accumulated in float64) and per-token bytes (the challenge's LUT rule, see `luts`), and returns
val_loss = sum NLL / tokens and val_bpb = sum NLL / (ln 2 * sum bytes). With stride == seq_len it
is the challenge's `eval_val`; with a smaller stride it is a sliding-window eval over the same
targets. `evaluate_path` is the fresh-load entry point used by the CLI and `verify`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from golfpack._progress import bar as progress_bar
from golfpack.errors import DataError, FormatError, UsageError
from golfpack.evaluator.dist import DistContext, all_reduce_sum, resolve_device
from golfpack.evaluator.windows import WindowPlan, check_stride, plan_windows, usable_targets
from golfpack.tokenizer import ByteLUTs, build_luts

DEFAULT_BATCH_SIZE = 32


@dataclass
class EvalResult:
    """One evaluation's numbers (sums over all ranks)."""

    val_loss: float  # mean NLL per scored target, nats
    val_bpb: float  # sum NLL / (ln 2 * sum bytes)
    tokens: int  # targets scored (each exactly once)
    bytes: int  # UTF-8 bytes those targets stand for
    seconds: float  # wall time of the scoring loop (this rank), excluding loading
    tokens_per_s: float  # tokens / seconds
    seq_len: int = 0  # window length L
    stride: int = 0  # window stride S (== seq_len: non-overlapping reference eval)
    windows: int = 0  # windows run over all ranks
    device: str = "cpu"  # device of rank 0
    world_size: int = 1  # processes that shared the windows
    model: dict[str, Any] | None = None  # config used and its provenance (evaluate_path; see model_info)

    @property
    def mode(self) -> str:
        return "non-overlapping" if self.stride == self.seq_len else "sliding"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mode"] = self.mode
        return d


def _as_token_tensor(tokens: Any) -> Tensor:
    if isinstance(tokens, Tensor):
        t = tokens.detach().reshape(-1)
        return t.to(torch.int64) if t.dtype != torch.int64 else t
    return torch.from_numpy(np.asarray(tokens).astype(np.int64, copy=False).reshape(-1))


def _autocast(device: torch.device):
    # CUDA: bf16 matmuls as in the challenge; the model returns fp32 logits, so the loss stays fp32.
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _scored_nll(model: torch.nn.Module, x: Tensor, y: Tensor, score_from: Tensor, offsets: Tensor) -> tuple[Tensor, Tensor]:
    """(per-target NLL fp32, scored mask) for a batch of windows; only scored positions pay for the head."""
    mask = offsets[None, :] >= score_from[:, None]
    head = getattr(model, "logits_from_hidden", None)
    if head is None:  # any model with token_nll works; it just computes the head everywhere
        return model.token_nll(x, y)[mask], mask
    h = model.hidden(x)
    logits = head(h[mask])
    return F.cross_entropy(logits.float(), y[mask], reduction="none"), mask


def model_vocab_size(model: torch.nn.Module) -> int | None:
    """V of the model's logits: a user's model read it from its logits at build time (`LanguageModel.probe`);
    the baseline family's config says it."""
    v = getattr(model, "vocab_size", None)
    if isinstance(v, int) and v > 0:
        return v
    return getattr(getattr(model, "config", None), "vocab_size", None)


def evaluate(
    model: torch.nn.Module,
    tokens: Any,
    luts: ByteLUTs,
    *,
    seq_len: int,
    stride: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str | torch.device = "cpu",
    dist: DistContext | None = None,
    progress: bool | None = False,
) -> EvalResult:
    """Score `model` (already on `device`) on a 1-D token stream; see the module docstring.

    `stride=None` means stride = seq_len. `dist` splits the windows over torchrun ranks and
    all-reduces the sums; without it this process scores everything it is given.
    """
    L = int(seq_len)
    S = check_stride(L, stride)
    if batch_size <= 0:
        raise UsageError(f"batch_size must be positive, got {batch_size}", param="batch_size")
    toks = _as_token_tensor(tokens)
    M = usable_targets(int(toks.numel()), L)
    toks = toks[: M + 1]
    vocab = luts.vocab_size
    model_vocab = model_vocab_size(model) or vocab
    if model_vocab != vocab:
        origin = getattr(model, "origin", None)
        raise DataError(f"vocab mismatch: the model{' (' + origin + ')' if origin else ''} gives {model_vocab} logits per "
                        f"token but the tokenizer has {vocab} pieces: use the tokenizer the model was trained with")
    lo, hi = int(toks.min()), int(toks.max())
    if lo < 0 or hi >= vocab:
        raise DataError(f"val tokens contain id {hi if hi >= vocab else lo}, outside the tokenizer's 0..{vocab - 1}: wrong tokenizer or val shards")

    ctx = dist if dist is not None else DistContext(device=resolve_device(device))
    dev = ctx.device
    plan: WindowPlan = plan_windows(M, L, S)
    local = plan.shard(ctx.rank, ctx.world_size)

    toks_dev = toks.to(dev)
    luts_dev = luts.to(dev)
    offsets = torch.arange(L, device=dev)
    starts = torch.from_numpy(local.starts).to(dev)
    score_from = torch.from_numpy(local.score_from).to(dev)
    nll_sum = torch.zeros((), dtype=torch.float64, device=dev)
    byte_sum = torch.zeros((), dtype=torch.float64, device=dev)

    bar = progress_bar(total=local.scored, desc="eval", unit="tok", unit_scale=True, enabled=progress if ctx.is_main else False)
    was_training = model.training
    model.eval()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    try:
        with torch.no_grad(), _autocast(dev):
            for b in range(0, local.num_windows, batch_size):
                st, sf = starts[b : b + batch_size], score_from[b : b + batch_size]
                idx = st[:, None] + offsets[None, :]
                x, y = toks_dev[idx], toks_dev[idx + 1]
                nll, mask = _scored_nll(model, x, y, sf, offsets)
                nll_sum += nll.double().sum()
                byte_sum += luts_dev.token_bytes(x[mask], y[mask]).double().sum()
                bar.update(int((L - local.score_from[b : b + batch_size]).sum()))
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    finally:
        bar.close()
        model.train(was_training)
    seconds = time.perf_counter() - t0

    sums = torch.stack([nll_sum.cpu(), torch.tensor(float(local.scored), dtype=torch.float64), byte_sum.cpu()])
    sums = all_reduce_sum(sums, ctx)
    nll_total, ntok, nbytes = (float(v) for v in sums.tolist())
    if int(ntok) != M:  # the plan's guarantee, checked on every run
        raise RuntimeError(f"window plan scored {int(ntok)} targets, expected {M}")
    val_loss = nll_total / ntok
    val_bpb = nll_total / (math.log(2.0) * nbytes)
    return EvalResult(
        val_loss=val_loss,
        val_bpb=val_bpb,
        tokens=int(ntok),
        bytes=int(round(nbytes)),
        seconds=seconds,
        tokens_per_s=ntok / seconds if seconds > 0 else float("inf"),
        seq_len=L,
        stride=S,
        windows=plan.num_windows,
        device=str(dev),
        world_size=ctx.world_size,
    )


def load_model(path: str | os.PathLike[str], *, num_heads: int | None = None, activation: str | None = None,
               device: str | torch.device = "cpu") -> torch.nn.Module:
    """Fresh-load a raw .pt, legacy .ptz or QGv3 artifact as an fp32 GPT on `device`."""
    return load_model_with_info(path, num_heads=num_heads, activation=activation, device=device)[0]


def model_info(cfg: Any, source: str, num_heads: int | None = None, activation: str | None = None) -> dict[str, Any]:
    """The config a score was computed with and where it came from, for the report.

    source: "artifact" (QGv3 header) or "inferred" (weight shapes). `overridden` lists the options
    applied on top; `assumed` the fields a raw checkpoint cannot tell that were left at their default
    (the activation: a relu^3 model scored as relu2 gives a valid but wrong number, so say so).
    """
    overridden = {k: v for k, v in (("num_heads", num_heads), ("activation", activation)) if v is not None}
    assumed = ["activation"] if source == "inferred" and activation is None else []
    return {"config": cfg.to_dict(), "source": source, "overridden": overridden, "assumed": assumed}


def load_model_with_info(path: str | os.PathLike[str], *, num_heads: int | None = None, activation: str | None = None,
                         device: str | torch.device = "cpu", model: Any = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """`load_model` plus `model_info` of the config it used. `model`: 'FILE.py[:NAME]' (or a ModelAdapter)
    for the user's own model code (docs/models.md); None is the baseline family."""
    from golfpack.adapters import load_adapter
    from golfpack.loading import check_state_dict, infer_config
    from golfpack.model import build_model

    adapter = load_adapter(model)
    if not adapter.is_baseline:
        from golfpack.loading import load_any

        lm = load_any(path)
        net = adapter.build(lm.state_dict, None, device=device)
        return net, {"config": None, "source": "model file", "adapter": adapter.name, "model_sha256": adapter.sha256,
                     "vocab_size": net.vocab_size, "kv_cache": False, "overridden": {}, "assumed": []}

    try:
        from golfpack.loading import load_any
    except ImportError:  # artifact loader not in this build: raw checkpoints still work
        load_any = None
    if load_any is not None:
        lm = load_any(path, num_heads=num_heads, activation=activation)
        sd, cfg, source = lm.state_dict, lm.config, lm.config_source
    else:
        from golfpack.formats.checkpoint import load_state_dict

        sd, cfg, source = load_state_dict(path), None, ""
    if cfg is None:  # foreign schema or no loader: infer_config raises the precise key/shape error
        try:
            cfg, source = infer_config(sd, num_heads=num_heads, activation=activation), "inferred"
        except FormatError as e:  # not the baseline family: the user's own code can run it
            raise FormatError(f"{e.detail}; if this is your own architecture, pass model='FILE.py[:NAME]' with its "
                              "model code (docs/models.md)", path=path) from None
    check_state_dict(sd, cfg)
    return build_model(cfg, sd, device=device), model_info(cfg, source, num_heads, activation)


def evaluate_path(
    path: str | os.PathLike[str],
    *,
    val: str,
    tokenizer: str | os.PathLike[str],
    seq_len: int = 1024,
    stride: int | None = None,
    max_tokens: int | None = None,
    device: str | torch.device = "cpu",
    num_heads: int | None = None,
    activation: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    dist: DistContext | None = None,
    progress: bool | None = False,
    model: Any = None,
) -> EvalResult:
    """Load a checkpoint/artifact from disk and evaluate it on the val shards matching `val`.
    `model`: the user's model code ('FILE.py[:NAME]'), for a model outside the baseline family."""
    from golfpack.formats.shards import load_tokens

    check_stride(seq_len, stride)  # fail on bad options before any loading
    if max_tokens is not None and max_tokens <= 0:
        raise UsageError(f"max_tokens must be positive, got {max_tokens}", param="max_tokens")
    dev = dist.device if dist is not None else resolve_device(device)
    net, info = load_model_with_info(path, num_heads=num_heads, activation=activation, device=dev, model=model)
    try:
        luts = build_luts(tokenizer, model_vocab_size(net))
    except DataError as e:
        origin = getattr(net, "origin", None)  # a user's model file: say which one gave that vocab
        raise (DataError(f"{origin}: its logits have {net.vocab_size} entries per token, but {e}") if origin else e) from None
    tokens = load_tokens(val, max_tokens)
    r = evaluate(net, tokens, luts, seq_len=seq_len, stride=stride, batch_size=batch_size, device=dev,
                 dist=dist, progress=progress)
    r.model = info
    return r


__all__ = ["ByteLUTs", "DEFAULT_BATCH_SIZE", "EvalResult", "build_luts", "evaluate", "evaluate_path", "load_model",
           "load_model_with_info", "model_info", "model_vocab_size"]
