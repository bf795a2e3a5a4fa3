"""How much each tensor, stored under each candidate spec, hurts the model - measured on calibration text.

Two estimates of the loss increase (nats/token) a single tensor causes when it alone is stored as
`spec` and every other tensor keeps its original values:

- direct: swap in the dequantized tensor (`fake_quantize`, exactly what pack stores), run one forward
  over a FIXED calibration batch, subtract the unquantized loss. One forward per (tensor, spec).
- proxy: 0.5 * sum_i F_i * (w_i - q_i)^2 with F the diagonal empirical Fisher (mean squared
  per-sequence gradient, scaled to per-token), the second-order Taylor term of the loss; it needs one
  backward per calibration sequence and no forward per candidate.

Calibration tokens must never be the validation tokens that get reported: `calib_tokens` reads a
train-shard glob or tokenizes Python's own documentation (`pydoc`), never val; `self_tokens` samples
the model's own text (the search's default, written to a shard so a replay reads the same tokens).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from golfpack._progress import bar as progress_bar
from golfpack.errors import GolfpackError
from golfpack.formats.spec import TensorSpec

DEFAULT_BITS = (8, 7, 6, 5, 4)
# a file named like validation data: fineweb_val_000000.bin, val_*.bin, x.val.bin, validation-*.bin
# (a bare substring test would also refuse 'interval_train.bin' or 'eval_run.calib.bin')
_VAL_NAME = re.compile(r"(^|[_\-.])val(id|idation)?([_\-.\d*?]|$)")
DEFAULT_CLIPS = ("quantile", "mse")


# ------------------------------------------------------------------------------------------------
# calibration tokens


def pydoc_tokens(tokenizer: str) -> np.ndarray:
    """Python's documentation topics (English prose shipped with Python), tokenized with `tokenizer`.

    Each page is one document, prefixed with the tokenizer's BOS id (as the challenge's shards are).
    """
    import sentencepiece as spm
    from pydoc_data.topics import topics

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
    bos = sp.bos_id()
    out: list[int] = []
    for key in sorted(topics):
        text = topics[key].strip()
        if not text:
            continue
        if bos >= 0:
            out.append(bos)
        out.extend(sp.encode(text))
    return np.asarray(out, dtype=np.int64)


def self_tokens(model: torch.nn.Module, *, sequences: int, length: int, seed: int = 0, bos: int = 1,
                device: str = "cpu", chunk: int = 16) -> np.ndarray:
    """The model's own text: `sequences` samples of `length` tokens, each after a BOS, as one stream
    (BOS-separated like documents in a shard). In-distribution calibration with no data at all - and
    never the validation tokens. Sampled at temperature 1 with a seeded generator."""
    gen = torch.Generator(device=device).manual_seed(seed)
    rows = []
    for i in range(0, sequences, chunk):
        n = min(chunk, sequences - i)
        prefix = torch.full((n, 1), bos, dtype=torch.long, device=device)
        rows.append(model.generate(prefix, length, generator=gen).cpu())  # type: ignore[operator]
    return torch.cat(rows).reshape(-1).numpy().astype(np.int64)


CALIB_MAX_TOKENS = 1 << 20  # calibration reads at most this many tokens (a glob may match GBs of train shards)


def calib_tokens(source: str, *, tokenizer: str | None = None, max_tokens: int | None = CALIB_MAX_TOKENS) -> np.ndarray:
    """'pydoc' (needs tokenizer) or a shard glob of NON-validation tokens (the first `max_tokens`)."""
    if source == "pydoc":
        if not tokenizer:
            raise GolfpackError("--calib pydoc needs --tokenizer (the sentencepiece .model of the checkpoint)")
        toks = pydoc_tokens(tokenizer)
    else:
        name = source.rsplit("/", 1)[-1].lower()
        # OUT.calib.bin is the search's own file of model samples (`--calib self`): never val, whatever OUT is
        if _VAL_NAME.search(name) and not name.endswith(".calib.bin"):
            raise GolfpackError(
                f"--calib {source!r} looks like validation data; calibrate on train shards or 'pydoc', never on the tokens you report"
            )
        from golfpack.formats.shards import load_tokens

        toks = np.asarray(load_tokens(source, max_tokens), dtype=np.int64)
    if max_tokens is not None:
        toks = toks[:max_tokens]
    return toks


def calib_halves(source: str, *, tokenizer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Calibration tokens split in two: the first half is measured on (per-tensor sensitivity, GPTQ
    Hessians), the second half is held out to judge whole layouts (the search's joint selection)."""
    toks = calib_tokens(source, tokenizer=tokenizer)
    half = len(toks) // 2
    return toks[:half], toks[half:]


@dataclass(frozen=True)
class CalibBatch:
    """A fixed (B, T) batch of inputs and next-token targets."""

    inputs: Tensor  # (B, T) int64
    targets: Tensor  # (B, T) int64
    digest: str  # sha256 of the token bytes: part of every cache key

    @property
    def tokens(self) -> int:
        return int(self.targets.numel())


def make_batch(tokens: np.ndarray, batch: int, seq_len: int, *, offset: int = 0, vocab_size: int | None = None) -> CalibBatch:
    """B contiguous windows of T+1 tokens, spread evenly over the token stream (starting at `offset`)."""
    toks = np.asarray(tokens, dtype=np.int64)[offset:]
    need = seq_len + 1
    if len(toks) < batch * need:
        raise GolfpackError(f"calibration text has {len(toks):,} tokens; need {batch * need:,} for {batch}x{seq_len} (use a smaller --calib-batch/--calib-seq)")
    if vocab_size is not None and len(toks) and int(toks.max()) >= vocab_size:
        raise GolfpackError(f"calibration token id {int(toks.max())} >= model vocab {vocab_size}: wrong tokenizer for this checkpoint?")
    stride = (len(toks) - need) // max(1, batch - 1) if batch > 1 else 0
    rows = np.stack([toks[i * stride : i * stride + need] for i in range(batch)])
    t = torch.from_numpy(rows)
    return CalibBatch(t[:, :-1].contiguous(), t[:, 1:].contiguous(), hashlib.sha256(rows.tobytes()).hexdigest())


# ------------------------------------------------------------------------------------------------
# candidates


def candidate_specs(
    t: Tensor,
    *,
    bits: Iterable[int] = DEFAULT_BITS,
    clips: Iterable[str] = DEFAULT_CLIPS,
    passthrough: Iterable[str] = ("fp16",),
    gptq: bool = False,
) -> list[TensorSpec]:
    """Specs worth trying for one tensor: its lossless store, cheaper passthroughs, and int widths x clips
    (x GPTQ rounding for matrices, when `gptq`).

    Non-float tensors only ever get `exact`. The lossless store of a float tensor is its own dtype
    (fp32 -> fp32, bf16 -> bf16, fp16 -> fp16), so "keep it as it is" is always a candidate.
    """
    if not t.is_floating_point():
        return [TensorSpec("passthrough", dtype="exact")]
    own = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(t.dtype, "exact")
    out = [TensorSpec("passthrough", dtype=own)]
    for d in passthrough:
        if d != own and d in ("fp16", "bf16", "fp32") and not (own in ("fp16", "bf16") and d == "fp32"):
            out.append(TensorSpec("passthrough", dtype=d))
    if t.numel() > 1:
        for b in sorted(set(bits), reverse=True):
            for c in clips:
                out.append(TensorSpec("int", bits=int(b), clip=c))
                if gptq and t.ndim == 2:
                    out.append(TensorSpec("int", bits=int(b), clip=c, gptq=True))
    return out


# ------------------------------------------------------------------------------------------------
# direct measurement


OBJECTIVES = ("kl", "nll")


@torch.no_grad()
def batch_loss(model: torch.nn.Module, batch: CalibBatch, *, device: str = "cpu", micro: int = 8) -> float:
    """Mean next-token loss (nats) over the batch, accumulated in fp64."""
    total = 0.0
    for i in range(0, batch.inputs.shape[0], micro):
        x = batch.inputs[i : i + micro].to(device)
        y = batch.targets[i : i + micro].to(device)
        total += float(model.token_nll(x, y).double().sum())  # type: ignore[operator]
    return total / batch.tokens


@torch.no_grad()
def batch_scores(model: torch.nn.Module, batch: CalibBatch, ref: list[Tensor] | None, *, device: str = "cpu", micro: int = 8) -> tuple[float, float]:
    """(mean NLL, mean KL(ref || model)) per token over the batch; KL is 0 without `ref` log-probs."""
    nll = kl = 0.0
    for k, i in enumerate(range(0, batch.inputs.shape[0], micro)):
        x = batch.inputs[i : i + micro].to(device)
        y = batch.targets[i : i + micro].to(device)
        logp = torch.log_softmax(model.logits(x).float(), dim=-1)  # type: ignore[operator]
        nll -= float(logp.gather(-1, y.unsqueeze(-1)).double().sum())
        if ref is not None:
            r = ref[k].to(device)
            kl += float((r.exp() * (r - logp)).sum(dim=-1).double().sum())
    return nll / batch.tokens, kl / batch.tokens


@torch.no_grad()
def reference_logprobs(model: torch.nn.Module, batch: CalibBatch, *, device: str = "cpu", micro: int = 8) -> list[Tensor]:
    return [
        torch.log_softmax(model.logits(batch.inputs[i : i + micro].to(device)).float(), dim=-1)  # type: ignore[operator]
        for i in range(0, batch.inputs.shape[0], micro)
    ]


def measure_direct(
    model: torch.nn.Module,
    state_dict: dict[str, Tensor],
    candidates: dict[str, list[TensorSpec]],
    batch: CalibBatch,
    *,
    device: str = "cpu",
    progress: bool | None = False,
    done: dict[str, dict[str, dict[str, float]]] | None = None,
    on_tensor: Callable[[str, dict[str, dict[str, float]]], None] | None = None,
    values: Callable[[str, TensorSpec], Tensor] | None = None,
) -> tuple[float, dict[str, dict[str, dict[str, float]]]]:
    """Effect of each (tensor, spec) alone on `batch`, from one forward each.

    Returns (base NLL, {"nll": {name: {label: delta NLL}}, "kl": {name: {label: KL(raw || quantized)}}}).
    Delta NLL is the loss change on these very tokens; KL measures how far the quantized model's
    predictions move from the raw model's, which does not depend on whether the calibration text is
    the text the model was trained for (see search docs: on out-of-domain calibration text, delta NLL
    can reward damage that happens to suit that text).

    `done` holds measurements already made (from the cache): those are not re-run. `on_tensor` is
    called after each tensor so a caller can persist progress. `values(name, spec)` gives the stored
    values (default: `fake_quantize` of the state-dict tensor; the search passes its packed records).
    """
    from golfpack.packer.quantize import fake_quantize

    get = values or (lambda n, s: fake_quantize(state_dict[n], s))
    model.eval()
    params = dict(model.named_parameters())
    ref = reference_logprobs(model, batch, device=device)
    base, _ = batch_scores(model, batch, None, device=device)
    out: dict[str, dict[str, dict[str, float]]] = {o: {k: dict(v) for k, v in (done or {}).get(o, {}).items()} for o in OBJECTIVES}

    def have(name: str, label: str) -> bool:
        return all(label in out[o].get(name, {}) for o in OBJECTIVES)

    todo = [(n, s) for n, specs in candidates.items() for s in specs if not have(n, s.label())]
    bar = progress_bar(total=len(todo), desc="sensitivity (direct)", unit="fwd", enabled=progress)
    for name, specs in candidates.items():
        missing = [s for s in specs if not have(name, s.label())]
        if not missing:
            continue
        if name not in params:
            raise GolfpackError(f"{name}: not a parameter of the model built from this checkpoint")
        p = params[name]
        orig = p.data.clone()
        try:
            for spec in missing:
                p.data.copy_(get(name, spec).to(device=p.device, dtype=p.dtype))
                nll, kl = batch_scores(model, batch, ref, device=device)
                out["nll"].setdefault(name, {})[spec.label()] = nll - base
                out["kl"].setdefault(name, {})[spec.label()] = kl
                bar.update(1)
        finally:
            p.data.copy_(orig)
        if on_tensor is not None:
            on_tensor(name, {o: out[o][name] for o in OBJECTIVES})
    bar.close()
    return base, out


# ------------------------------------------------------------------------------------------------
# Fisher proxy


def gradient_stats(
    model: torch.nn.Module,
    batch: CalibBatch,
    *,
    names: Iterable[str] | None = None,
    device: str = "cpu",
    progress: bool | None = False,
    sample: bool = False,
    seed: int = 0,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(mean gradient, diagonal empirical Fisher per token) of the calibration loss, per parameter.

    Fisher = T * mean_b (d loss_b / d w)^2, loss_b the mean loss of calibration sequence b: its
    gradient's variance is about 1/T of the per-token one, hence the factor T. The mean gradient is
    not zero here (calibration text is not the training text), so the proxy keeps the first-order
    term too. With `sample=True` the targets are drawn from the model's own predictions (the true
    Fisher, whose quadratic form is the second-order KL(raw || perturbed); the mean gradient is then ~0).
    """
    model.eval()
    params = dict(model.named_parameters())
    want = list(names) if names is not None else list(params)
    acc = {n: torch.zeros_like(params[n], dtype=torch.float32) for n in want if n in params}
    gsum = {n: torch.zeros_like(a) for n, a in acc.items()}
    B, T = batch.inputs.shape
    gen = torch.Generator(device=device).manual_seed(seed)
    bar = progress_bar(total=B, desc="sensitivity (fisher)", unit="seq", enabled=progress)
    for b in range(B):
        model.zero_grad(set_to_none=True)
        x = batch.inputs[b : b + 1].to(device)
        y = batch.targets[b : b + 1].to(device)
        if sample:
            with torch.no_grad():
                probs = torch.softmax(model.logits(x).float(), dim=-1)  # type: ignore[operator]
                y = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=gen).view_as(y)
        loss = model(x, y)
        loss.backward()
        for n, a in acc.items():
            g = params[n].grad
            if g is not None:
                a += g.detach().float() ** 2
                gsum[n] += g.detach().float()
        bar.update(1)
    bar.close()
    model.zero_grad(set_to_none=True)
    return {n: g / B for n, g in gsum.items()}, {n: a * (T / B) for n, a in acc.items()}


def proxy_deltas(
    state_dict: dict[str, Tensor],
    fisher: dict[str, Tensor],
    candidates: dict[str, list[TensorSpec]],
    grad: dict[str, Tensor] | None = None,
    values: Callable[[str, TensorSpec], Tensor] | None = None,
) -> dict[str, dict[str, float]]:
    """Taylor estimate g . dw + 0.5 * sum F * dw^2 (dw = fake_quantize(w) - w) for every candidate.

    With `grad=None` only the Fisher-weighted squared error remains. Measured on nolanvild with
    pydoc calibration the first-order term lifts the rank correlation with direct measurement from
    about 0.36 to 0.61 (0.76 on the pairs whose direct effect exceeds 1e-3 nats).
    """
    from golfpack.packer.quantize import fake_quantize

    get = values or (lambda n, s: fake_quantize(state_dict[n], s))
    out: dict[str, dict[str, float]] = {}
    for name, specs in candidates.items():
        w = state_dict[name]
        row: dict[str, float] = {}
        for spec in specs:
            if not w.is_floating_point() or name not in fisher:
                row[spec.label()] = 0.0
                continue
            d = get(name, spec).float() - w.float()
            v = 0.5 * (fisher[name].cpu() * d * d).sum()
            if grad is not None and name in grad:
                v = v + (grad[name].cpu() * d).sum()
            row[spec.label()] = float(v)
        out[name] = row
    return out


# ------------------------------------------------------------------------------------------------
# post-processing and statistics


def regularize(deltas: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    """What the solver should believe: no negative harm, and fewer bits never hurts less.

    A one-batch measurement can come out slightly negative (quantization noise that happens to help
    on these tokens) - that does not generalise, so it is clamped to 0. Within one clip rule (and rounding) the loss
    is made non-increasing in the bit width (running max from wide to narrow), which removes
    measurement noise without ever hiding a real cost.
    """
    out: dict[str, dict[str, float]] = {}
    for name, row in deltas.items():
        new = {k: max(0.0, float(v)) for k, v in row.items()}
        by_clip: dict[tuple[str, bool], list[tuple[int, str]]] = {}
        for label in new:
            spec = TensorSpec.parse(label)
            if spec.kind == "int":
                by_clip.setdefault((spec.clip, spec.gptq), []).append((spec.bits, label))
        for items in by_clip.values():
            run = 0.0
            for _, label in sorted(items, reverse=True):
                run = max(run, new[label])
                new[label] = run
        out[name] = new
    return out


def _ranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    xs = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j)  # ties share their mean rank
        i = j + 1
    return ranks


def spearman(x: Iterable[float], y: Iterable[float]) -> float:
    """Spearman rank correlation (average ranks for ties); nan if either side is constant."""
    a, b = np.asarray(list(x), dtype=np.float64), np.asarray(list(y), dtype=np.float64)
    if len(a) != len(b):
        raise ValueError("spearman: lengths differ")
    if len(a) < 2:
        return math.nan
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def compare(direct: dict[str, dict[str, float]], proxy: dict[str, dict[str, float]], *, lossy_only: bool = True) -> dict[str, Any]:
    """Rank agreement of proxy vs direct over all (tensor, spec) pairs (lossy ones by default)."""
    xs, ys = [], []
    for name, row in direct.items():
        for label, v in row.items():
            if label not in proxy.get(name, {}):
                continue
            if lossy_only and TensorSpec.parse(label).kind != "int":
                continue
            xs.append(proxy[name][label])
            ys.append(v)
    scale = float(np.dot(xs, ys) / np.dot(xs, xs)) if xs and float(np.dot(xs, xs)) > 0 else math.nan
    return {"pairs": len(xs), "spearman": spearman(xs, ys), "proxy_to_direct_scale": scale}


__all__ = [
    "DEFAULT_BITS",
    "DEFAULT_CLIPS",
    "OBJECTIVES",
    "CalibBatch",
    "batch_loss",
    "batch_scores",
    "calib_tokens",
    "candidate_specs",
    "compare",
    "gradient_stats",
    "make_batch",
    "measure_direct",
    "proxy_deltas",
    "pydoc_tokens",
    "regularize",
    "spearman",
]
