"""Budget search: the per-tensor layout (spec per tensor + artifact codec) with the least predicted
loss whose exact artifact size plus code bytes fits the budget, with the least headroom we can reach.

Pipeline (each phase has a progress bar and, with a cache dir, is skipped when already measured):

1. candidates: every tensor gets a few specs (`sensitivity.candidate_specs`), each quantized ONCE
   into the TensorRecord pack would store; the same records feed costs, sensitivity and the packs.
2. floor: the cheapest candidate of every tensor, packed exactly; a budget below it fails here,
   before any model measurement.
3. cost table: bytes of each (tensor, spec), measured by encoding that record alone as a QGv3
   artifact (same writer, the first codec). Grouped compression is not additive, so every layout the
   search packs exactly feeds an affine map `artifact = a * sum(costs) + b` (per codec); the solver
   sees the budget through that map.
4. sensitivity: delta loss per (tensor, spec) on calibration tokens (direct forward, or the Taylor
   proxy); the solver minimises their sum.
5. solve + fit: multiple-choice knapsack, exact pack of the answer, then move the solver's budget
   (secant steps, bisection once bracketed) until the exact artifact fits with < target headroom;
   finally spend what is left on upgrades, each batch checked by an exact pack.
6. select: the solver's answer, the greedy and proxy answers and every preset that fits are scored
   JOINTLY (all tensors quantized at once) on held-out calibration tokens; the lowest damage wins.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from golfpack._version import __version__
from golfpack._io import write_bytes_atomic
from golfpack._progress import bar as progress_bar
from golfpack.errors import GolfpackError
from golfpack.formats.records import TensorRecord
from golfpack.model import ModelConfig
from golfpack.packer.solver import InfeasibleBudget, Solution, solve
from golfpack.formats.spec import TensorSpec

DEFAULT_TARGET_HEADROOM = 2048  # stop fitting once the unused budget is below this many bytes
CACHE_VERSION = 2  # bump when what a cache file means changes


@dataclass
class SearchConfig:
    """Knobs of one search (CLI flags map 1:1)."""

    budget: int  # byte cap for model artifact + code files
    code: list[str] = field(default_factory=list)  # submission code files, counted byte for byte
    calib: str = "self"  # calibration tokens: 'self' (the model's own samples), a train-shard glob, or 'pydoc' (never val)
    tokenizer: str | None = None  # sentencepiece model (for --calib pydoc; its BOS id for 'self')
    self_sequences: int = 128  # --calib self: sampled sequences (of calib_seq tokens; half measure, half select)
    self_seed: int = 0  # --calib self: sampling seed
    calib_out: str | None = None  # --calib self: where the samples are written as a shard (the policy points there)
    codecs: tuple[str, ...] = ("lzma",)  # artifact codecs to consider (each is fitted; the first also prices the cost tables); 'all' = lzma, zstd, brotli as available
    bits: tuple[int, ...] = (8, 7, 6, 5, 4)  # integer widths offered to every float tensor
    clips: tuple[str, ...] = ("quantile", "mse")  # clip rules offered for every width
    gptq: bool = True  # also offer every matrix width x clip with GPTQ rounding (Hessians from the calibration tokens)
    gptq_batch: int = 32  # calibration sequences (of calib_seq tokens) for the GPTQ Hessians
    passthrough: tuple[str, ...] = ("fp16",)  # lossy passthrough dtypes offered besides the tensor's own
    calib_batch: int = 16  # calibration sequences for direct measurement (8 -> 16 cut nolanvild's gap at 90% of int6 bytes 0.00517 -> 0.00451 bpb)
    calib_seq: int = 256  # tokens per calibration sequence
    sensitivity: str = "both"  # direct | proxy (Taylor: gradient + diagonal Fisher) | both (direct drives, proxy's rank agreement reported)
    proxy_batch: int = 32  # calibration sequences for the proxy's gradient statistics
    objective: str = "kl"  # what a tensor's damage means: kl = KL(raw || quantized) predictions, nll = delta loss on the calibration tokens
    select: bool = True  # pick the final layout among solver/proxy/greedy/preset alternatives by JOINT held-out loss
    select_batch: int = 32  # held-out calibration sequences for that joint measurement
    target_headroom: int = DEFAULT_TARGET_HEADROOM  # fit until budget - total < this
    max_fit_packs: int = 12  # exact packs allowed to fit the solver's budget (per codec)
    max_repair_packs: int = 8  # exact packs allowed to spend the remaining headroom (per codec)
    solver: str = "dp"  # dp | greedy | best
    cache_dir: str | None = None  # where measurements are kept between searches
    device: str = "cpu"  # torch device for sensitivity forwards
    num_heads: int | None = None  # override the inferred head count
    activation: str | None = None  # MLP activation (not inferable from shapes)
    progress: bool | None = None  # progress bars on stderr: None = when it is a terminal


# ------------------------------------------------------------------------------------------------
# small helpers


def _codecs(requested: tuple[str, ...]) -> list[str]:
    from golfpack.formats.codecs import available_codecs

    avail = list(available_codecs())
    if not requested or "all" in requested:
        return [c for c in ("lzma", "brotli", "zstd") if c in avail]
    bad = [c for c in requested if c not in avail and c != "best"]
    if bad:
        raise GolfpackError(f"unknown or unavailable codec(s) {', '.join(bad)}: use {', '.join(avail)}, 'best' (per-stream choice inside QGv3) or all")
    return list(dict.fromkeys(requested))


def exact_name_pattern(name: str) -> str:
    """A policy pattern matching exactly `name` (a glob when it has no glob metacharacters)."""
    return name if not any(ch in name for ch in "*?[]") else "re:" + re.escape(name)


def layout_policy(specs: dict[str, TensorSpec], name: str = "search", calibration: Any = None) -> Any:
    """A Policy that resolves to exactly `specs`: one rule per distinct spec listing exact names."""
    from golfpack.packer.policy import Policy, Rule

    by_spec: dict[str, list[str]] = {}
    for n, s in specs.items():
        by_spec.setdefault(s.label(), []).append(exact_name_pattern(n))
    rules = tuple(Rule(spec=TensorSpec.parse(lbl), match=tuple(names)) for lbl, names in by_spec.items())
    return Policy(name=name, rules=rules, default=TensorSpec.parse("fp16"), calibration=calibration)


def write_policy(path: str | Path, policy: Any, *, comment: dict[str, Any] | None = None) -> None:
    """Policy JSON loadable by `Policy.load` (and `golfpack pack --policy FILE`)."""
    d = policy.to_dict()
    write_bytes_atomic(path, (json.dumps(d, indent=2) + "\n").encode())


def pack_meta(src: Path, kind: str, src_bytes: bytes) -> dict[str, Any]:
    """The meta `pack_file` writes for `src`, so a replayed pack gives byte-identical output."""
    return {
        "golfpack_version": __version__,
        "source": src.name,
        "source_kind": kind,
        "source_sha256": hashlib.sha256(src_bytes).hexdigest(),
    }


class Cache:
    """JSON files under a directory, keyed by content hashes; no-op without a directory."""

    def __init__(self, root: str | None) -> None:
        self.root = Path(root) if root else None
        if self.root is not None:
            self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, kind: str, key: str) -> Path | None:
        return None if self.root is None else self.root / f"{kind}-{key}.json"

    def get(self, kind: str, key: str) -> dict[str, Any] | None:
        p = self._path(kind, key)
        if p is None or not p.is_file():
            return None
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError:
            return None  # a damaged entry is re-measured, never trusted
        return d if d.get("cache_version") == CACHE_VERSION else None

    def put(self, kind: str, key: str, value: dict[str, Any]) -> None:
        p = self._path(kind, key)
        if p is not None:
            write_bytes_atomic(p, json.dumps({"cache_version": CACHE_VERSION, **value}).encode())


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


# ------------------------------------------------------------------------------------------------
# the problem: tensors, candidates, records


@dataclass
class Problem:
    """A checkpoint and its candidate records, shared by every phase."""

    src: Path
    src_bytes: bytes
    kind: str
    state_dict: dict[str, Tensor]
    config: ModelConfig
    names: list[str]
    candidates: dict[str, list[TensorSpec]]  # per tensor, in a fixed order
    code_bytes: int
    code_files: list[str]
    calibration: Any = None  # GptqCalibration of the +gptq candidates (digest filled once Hessians exist)
    tokenizer: str | None = None  # for a 'pydoc' calibration source
    records: dict[tuple[str, str], TensorRecord] = field(default_factory=dict)  # (name, label) -> record
    hessians: dict[str, Tensor] | None = None  # GPTQ Hessians, computed on first use
    alone: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (name, label, codec) -> one-record artifact bytes

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.src_bytes).hexdigest()

    def record(self, name: str, spec: TensorSpec) -> TensorRecord:
        key = (name, spec.label())
        rec = self.records.get(key)
        if rec is None:
            from golfpack.packer.quantize import quantize_tensor

            h = self.gptq_hessians().get(name) if spec.gptq else None
            rec = quantize_tensor(name, self.state_dict[name], spec, h)
            self.records[key] = rec
        return rec

    def gptq_hessians(self) -> dict[str, Tensor]:
        """Hessians of every matrix with a +gptq candidate, from the pinned calibration tokens (the
        same call `golfpack pack` makes when it replays the policy)."""
        if self.hessians is None:
            from golfpack.packer.hessian import hessians_for

            if self.calibration.digest is None:
                raise GolfpackError("internal: GPTQ records before the calibration tokens were pinned (Problem.pin_calibration)")
            names = [n for n, c in self.candidates.items() if any(s.gptq for s in c)]
            self.hessians, self.calibration = hessians_for(self.state_dict, self.config, names, self.calibration, tokenizer=self.tokenizer)
        return self.hessians

    def pin_calibration(self, source: str) -> None:
        """Fix the calibration tokens (`source`: a shard glob or 'pydoc') and record their digest, which
        keys the caches and lets `pack` check a replay reads the same tokens."""
        from dataclasses import replace

        from golfpack.packer.hessian import calibration_batch

        cal = replace(self.calibration, source=source, digest=None)
        if any(s.gptq for c in self.candidates.values() for s in c):  # only GPTQ reads these tokens
            cal = replace(cal, digest=calibration_batch(cal, tokenizer=self.tokenizer, vocab_size=self.config.vocab_size).digest)
        self.calibration = cal

    def policy_of(self, specs: dict[str, TensorSpec]) -> Any:
        """The policy `golfpack pack` replays to exactly these specs (naming the GPTQ tokens if it needs them)."""
        return layout_policy(specs, calibration=self.calibration if any(s.gptq for s in specs.values()) else None)

    def alone_bytes(self, name: str, spec: TensorSpec, codec: str) -> int:
        """Bytes of a QGv3 artifact holding just this record: the cost-table entry."""
        key = (name, spec.label(), codec)
        if key not in self.alone:
            from golfpack.formats.qgv3 import encode_qgv3

            self.alone[key] = len(encode_qgv3([self.record(name, spec)], config=None, policy=None, codec=codec, meta=None))
        return self.alone[key]

    def specs_of(self, choice: tuple[int, ...] | list[int]) -> dict[str, TensorSpec]:
        return {n: self.candidates[n][j] for n, j in zip(self.names, choice)}

    def encode(self, choice: tuple[int, ...] | list[int], codec: str) -> bytes:
        """The exact artifact bytes `golfpack pack --policy <layout> --codec codec` writes."""
        return self.encode_specs(self.specs_of(choice), codec)

    def encode_specs(self, specs: dict[str, TensorSpec], codec: str) -> bytes:
        from golfpack.formats.qgv3 import encode_qgv3

        policy = self.policy_of(specs)
        recs = [self.record(n, specs[n]) for n in self.names]
        return encode_qgv3(
            recs, config=self.config.to_dict(), policy=policy.to_dict(), codec=codec,
            meta=pack_meta(self.src, self.kind, self.src_bytes),
        )


def load_problem(ckpt: str | Path, cfg: SearchConfig) -> Problem:
    from golfpack.packer.pack import count_code_bytes, load_input
    from golfpack.packer.sensitivity import candidate_specs

    code_bytes, code_files = count_code_bytes(list(cfg.code))  # fail fast on a missing --code file
    src = Path(ckpt)
    if not src.is_file():
        raise GolfpackError(f"{src}: file not found")
    sd, config, kind = load_input(src, num_heads=cfg.num_heads, activation=cfg.activation)
    if config is None:
        raise GolfpackError(f"{src}: not a baseline-family GPT (cannot infer its config); the search needs to run the model")
    from golfpack.model import GPT
    from golfpack.packer.hessian import GptqCalibration, weight_inputs

    if cfg.gptq:  # GPTQ needs a linear layer's inputs; the module tree says which (no weights needed)
        with torch.device("meta"):
            linear = set(weight_inputs(GPT(config)))
    else:
        linear = set()
    cands = {
        n: candidate_specs(t, bits=cfg.bits, clips=cfg.clips, passthrough=cfg.passthrough, gptq=n in linear) for n, t in sd.items()
    }
    # the tokens are pinned (digest) by `pin_calibration`, after the floor check
    cal = GptqCalibration(source=cfg.calib, batch=cfg.gptq_batch, seq=cfg.calib_seq)
    return Problem(src, src.read_bytes(), kind, sd, config, list(sd), cands, code_bytes, code_files, cal, cfg.tokenizer)


def self_calibration(p: Problem, cfg: SearchConfig) -> Path:
    """Sample the model's own text (`sensitivity.self_tokens`) and write it as a shard: at `cfg.calib_out`,
    else in the cache (reused by later searches), else in a temp folder. Returns the shard's path."""
    import tempfile

    from golfpack.formats.shards import write_shard
    from golfpack.model import build_model
    from golfpack.packer import sensitivity as S

    key = _key("selfcal", p.sha, cfg.self_sequences, cfg.calib_seq, cfg.self_seed, __version__)
    cached = None if cfg.cache_dir is None else Path(cfg.cache_dir) / f"selfcal-{key}_train.bin"
    # no cache, no output: the temp folder under a content key (a rerun reuses it instead of piling up)
    dest = Path(cfg.calib_out) if cfg.calib_out else cached or Path(tempfile.gettempdir()) / f"golfpack-selfcal-{key}_train.bin"
    if cached is not None and cached.is_file():
        if dest != cached:
            write_bytes_atomic(dest, cached.read_bytes())
        return dest
    bos = 1  # the challenge shards' BOS; a given tokenizer says its own
    if cfg.tokenizer:
        from golfpack.tokenizer import load_sentencepiece

        bos = max(0, load_sentencepiece(cfg.tokenizer).bos_id())
    model = build_model(p.config, p.state_dict, device=cfg.device)
    write_shard(dest, S.self_tokens(model, sequences=cfg.self_sequences, length=cfg.calib_seq, seed=cfg.self_seed, bos=bos, device=cfg.device))
    if cached is not None and dest != cached:
        write_bytes_atomic(cached, dest.read_bytes())
    return dest


# ------------------------------------------------------------------------------------------------
# phase 2: floor


def cheapest_choice(p: Problem, codec: str) -> list[int]:
    """Per tensor, the round-to-nearest candidate with the fewest payload bytes; candidates that tie (the
    narrowest width under several clip rules) are told apart by their size compressed alone.

    GPTQ candidates are left out: same grid, so about the same bytes, but they need Hessians (model
    forwards) and the floor is checked before any measurement."""
    out = []
    for n in p.names:
        specs = p.candidates[n]
        plain = [j for j, s in enumerate(specs) if not s.gptq]
        est = {j: _payload_estimate(p.state_dict[n], specs[j]) for j in plain}
        lo = min(est.values())
        ties = [j for j in plain if est[j] == lo]
        out.append(ties[0] if len(ties) == 1 else min(ties, key=lambda j: p.alone_bytes(n, specs[j], codec)))
    return out


def _payload_estimate(t: Tensor, s: TensorSpec) -> float:
    n = t.numel()
    if s.kind == "int":
        rows = t.shape[0] if t.ndim == 2 else 0
        return n * s.bits / 8 + (2 * rows if t.ndim == 2 else 4)
    if s.dtype == "exact":
        return n * t.element_size()
    return n * {"fp16": 2, "bf16": 2, "fp32": 4}[s.dtype]


def floor_bytes(p: Problem, codecs: list[str]) -> tuple[int, str, list[int]]:
    """(exact total bytes incl. code, codec, choice) of the cheapest layout over the codecs."""
    choice = cheapest_choice(p, codecs[0])
    best = None
    for c in codecs:
        n = len(p.encode(choice, c)) + p.code_bytes
        if best is None or n < best[0]:
            best = (n, c, choice)
    assert best is not None
    return best


# ------------------------------------------------------------------------------------------------
# phase 3: cost tables


def cost_tables(p: Problem, codecs: list[str], cache: Cache, *, progress: bool | None) -> dict[str, dict[str, dict[str, int]]]:
    """codec -> tensor -> spec label -> bytes of a one-record QGv3 artifact holding that record."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    todo = []
    for c in codecs:
        key = _key("cost", p.sha, c, __version__, {n: [s.label() for s in v] for n, v in p.candidates.items()}, p.calibration.digest)
        hit = cache.get("cost", key)
        if hit is not None:
            out[c] = hit["table"]
        else:
            todo.append((c, key))
    if not todo:
        return out
    bar = progress_bar(total=len(todo) * sum(len(v) for v in p.candidates.values()), desc="cost tables", unit="rec", enabled=progress)
    for c, key in todo:
        table: dict[str, dict[str, int]] = {}
        for n in p.names:
            row = {}
            for s in p.candidates[n]:
                row[s.label()] = p.alone_bytes(n, s, c)
                bar.update(1)
            table[n] = row
        cache.put("cost", key, {"table": table})
        out[c] = table
    bar.close()
    return out


@dataclass
class CostModel:
    """artifact bytes ~= a * sum(one-record costs) + b, fitted on exact packs of reference layouts."""

    a: float
    b: float
    points: list[tuple[int, int]]  # (sum of table costs, exact artifact bytes) used for the fit

    def predict(self, s: float) -> float:
        return self.a * s + self.b

    def solver_budget(self, model_budget: int) -> int:
        """The table-cost budget whose predicted artifact is model_budget."""
        return int(math.floor((model_budget - self.b) / self.a)) if self.a > 0 else model_budget


def fit_cost_model(points: list[tuple[int, int]]) -> CostModel:
    if len(points) == 1 or len({x for x, _ in points}) == 1:
        x, y = points[0]
        return CostModel(1.0, float(y - x), points)
    xs = torch.tensor([x for x, _ in points], dtype=torch.float64)
    ys = torch.tensor([y for _, y in points], dtype=torch.float64)
    xm, ym = xs.mean(), ys.mean()
    a = float(((xs - xm) * (ys - ym)).sum() / ((xs - xm) ** 2).sum())
    return CostModel(a, float(ym - a * xm), points)


# ------------------------------------------------------------------------------------------------
# phase 4: sensitivity


def sensitivity(p: Problem, cfg: SearchConfig, cache: Cache) -> dict[str, Any]:
    """{'base_loss', 'direct' (maybe), 'proxy' (maybe), 'deltas' (what the solver uses), 'agreement', ...}.

    Direct measurement yields both objectives from the same forwards (cached together); the proxy for
    `kl` is 0.5 * F_true * dw^2 (Fisher with labels sampled from the model), for `nll` the Taylor
    estimate g . dw + 0.5 * F_emp * dw^2.
    """
    from golfpack.model import build_model
    from golfpack.packer import sensitivity as S

    if cfg.sensitivity not in ("direct", "proxy", "both"):
        raise GolfpackError(f"sensitivity must be direct, proxy or both, got {cfg.sensitivity!r}")
    if cfg.objective not in S.OBJECTIVES:
        raise GolfpackError(f"objective must be one of {', '.join(S.OBJECTIVES)}, got {cfg.objective!r}")
    toks = S.calib_halves(cfg.calib, tokenizer=cfg.tokenizer)[0]
    batch = S.make_batch(toks, cfg.calib_batch, cfg.calib_seq, vocab_size=p.config.vocab_size)
    labels = {n: [s.label() for s in v] for n, v in p.candidates.items()}
    key = _key("sens", p.sha, p.config.to_dict(), batch.digest, cfg.proxy_batch, __version__, p.calibration.digest)
    hit = cache.get("sens", key) or {}
    model = build_model(p.config, p.state_dict, device=cfg.device)
    out: dict[str, Any] = {"calib_digest": batch.digest, "calib_tokens": batch.tokens, "cache_key": key, "objective": cfg.objective}

    def save(partial: dict[str, Any]) -> None:
        hit.update(partial)
        cache.put("sens", key, {k: v for k, v in hit.items() if k != "cache_version"})

    def complete(table: dict[str, dict[str, float]] | None) -> bool:
        return table is not None and all(l in table.get(n, {}) for n, ls in labels.items() for l in ls)

    direct = hit.get("direct", {})
    base = hit.get("base_loss")
    if cfg.sensitivity in ("direct", "both") and not all(complete(direct.get(o)) for o in S.OBJECTIVES):
        state = {"direct": direct}

        def on_tensor(name: str, rows: dict[str, dict[str, float]]) -> None:
            for o, row in rows.items():
                state["direct"].setdefault(o, {})[name] = row
            save({"direct": state["direct"]})

        base, direct = S.measure_direct(
            model, p.state_dict, p.candidates, batch, device=cfg.device, progress=cfg.progress, done=direct,
            values=lambda n, s: p.record(n, s).dequantize(), on_tensor=on_tensor,
        )
        save({"base_loss": base, "direct": direct})
    pkey = f"proxy_{cfg.objective}"
    if cfg.sensitivity in ("proxy", "both") or pkey in hit:
        proxy = hit.get(pkey)
        if not complete(proxy):
            pb = S.make_batch(toks, cfg.proxy_batch, cfg.calib_seq, vocab_size=p.config.vocab_size)
            values = lambda n, s: p.record(n, s).dequantize()  # noqa: E731
            if cfg.objective == "kl":
                _, fisher = S.gradient_stats(model, pb, device=cfg.device, progress=cfg.progress, sample=True)
                proxy = S.proxy_deltas(p.state_dict, fisher, p.candidates, values=values)
            else:
                # first-order term from the calibration batch itself, curvature from a larger batch
                grad, _ = S.gradient_stats(model, batch, device=cfg.device, progress=cfg.progress)
                _, fisher = S.gradient_stats(model, pb, device=cfg.device, progress=cfg.progress)
                proxy = S.proxy_deltas(p.state_dict, fisher, p.candidates, grad=grad, values=values)
            save({pkey: proxy})
        out["proxy"] = proxy
    if base is None:
        base = S.batch_loss(model, batch, device=cfg.device)
        save({"base_loss": base})
    out["base_loss"] = base
    if complete(direct.get(cfg.objective)):
        out["direct"] = direct[cfg.objective]
    if "direct" in out and "proxy" in out:
        out["agreement"] = S.compare(out["direct"], out["proxy"])
    raw = out["proxy"] if cfg.sensitivity == "proxy" else out["direct"]
    out["deltas"] = S.regularize({n: {l: raw[n][l] for l in labels[n]} for n in p.names})
    return out


# ------------------------------------------------------------------------------------------------
# phase 5: solve and fit


@dataclass
class Fit:
    """The fitted layout for one codec."""

    codec: str
    choice: tuple[int, ...]
    model_bytes: int  # exact artifact size
    predicted_loss: float  # sum of solver deltas (nats/token)
    packs: int  # exact packs spent fitting
    trace: list[dict[str, Any]]  # (solver budget, exact total, fits) per step
    cost_model: CostModel


class Fitter:
    """Solve + exact-measure loop for one codec.

    `costs`/`losses` are per-group option tables; `size_of(choice)` returns the EXACT artifact bytes
    of a layout (an encode); `extra_choices` are layouts to try if nothing the solver proposes fits.
    """

    def __init__(self, costs: list[list[int]], losses: list[list[float]], size_of: Callable[[tuple[int, ...]], int],
                 cfg: SearchConfig, *, codec: str = "", extra_choices: list[tuple[int, ...]] | None = None):
        self.costs, self.losses, self.cfg, self.codec = costs, losses, cfg, codec
        self.size_of = size_of
        self.extra = list(extra_choices or [])
        self.sizes: dict[tuple[int, ...], int] = {}

    @classmethod
    def for_problem(cls, p: Problem, codec: str, table: dict[str, dict[str, int]], deltas: dict[str, dict[str, float]], cfg: SearchConfig) -> "Fitter":
        costs = [[int(table[n][s.label()]) for s in p.candidates[n]] for n in p.names]
        losses = [[float(deltas[n][s.label()]) for s in p.candidates[n]] for n in p.names]
        return cls(costs, losses, lambda ch: len(p.encode(ch, codec)), cfg, codec=codec, extra_choices=[tuple(cheapest_choice(p, codec))])

    def measure(self, choice: tuple[int, ...]) -> int:
        choice = tuple(choice)
        if choice not in self.sizes:
            self.sizes[choice] = int(self.size_of(choice))
        return self.sizes[choice]

    def cheapest(self) -> tuple[int, ...]:
        return tuple(min(range(len(c)), key=lambda j: (c[j], l[j])) for c, l in zip(self.costs, self.losses))

    def richest(self) -> tuple[int, ...]:
        return tuple(max(range(len(c)), key=lambda j: c[j]) for c in self.costs)

    def table_cost(self, choice: tuple[int, ...]) -> int:
        return sum(self.costs[g][j] for g, j in enumerate(choice))

    def loss(self, choice: tuple[int, ...]) -> float:
        return sum(self.losses[g][j] for g, j in enumerate(choice))

    def solve(self, table_budget: int) -> Solution:
        return solve(self.costs, self.losses, table_budget, method=self.cfg.solver)

    def calibrate(self) -> CostModel:
        # one exact pack to start (the cheapest layout); the fit loop adds every layout it measures
        ch = self.cheapest()
        return fit_cost_model([(self.table_cost(ch), self.measure(ch))])

    def fit(self, model_budget: int) -> Fit:
        """Largest-loss-reduction layout whose exact artifact is <= model_budget, headroom minimised."""
        cm = self.calibrate()
        floor_t = sum(min(c) for c in self.costs)
        trace: list[dict[str, Any]] = []
        best: tuple[float, int, tuple[int, ...]] | None = None  # (loss, -size, choice) among fitting
        tb = max(floor_t, cm.solver_budget(model_budget))
        lo_ok, hi_bad = None, None  # table budgets known to fit / to overflow
        packs0 = len(self.sizes)
        for _ in range(self.cfg.max_fit_packs):
            try:
                sol = self.solve(tb)
            except InfeasibleBudget:
                tb = floor_t
                sol = self.solve(tb)
            size = self.measure(sol.choice)
            ok = size <= model_budget
            pts = {(self.table_cost(c), n) for c, n in self.sizes.items()}
            if len({x for x, _ in pts}) >= 2:
                cm = fit_cost_model(sorted(pts))
            trace.append({"solver_budget": tb, "table_cost": sol.cost, "model_bytes": size, "fits": ok, "predicted_loss": sol.loss})
            if ok:
                cand = (sol.loss, -size, sol.choice)
                if best is None or cand < best:
                    best = cand
                lo_ok = tb if lo_ok is None else max(lo_ok, tb)
                if model_budget - size < self.cfg.target_headroom:
                    break
                step = max(1, int((model_budget - size) / max(cm.a, 1e-6)))
                nxt = tb + step
            else:
                if tb <= floor_t:
                    break  # even the solver's cheapest answer overflows: nothing smaller exists
                hi_bad = tb if hi_bad is None else min(hi_bad, tb)
                step = max(1, int((size - model_budget) / max(cm.a, 1e-6)))
                nxt = tb - step
            if lo_ok is not None and hi_bad is not None:
                if hi_bad - lo_ok <= 1:
                    break
                if not (lo_ok < nxt < hi_bad):
                    nxt = (lo_ok + hi_bad) // 2
            nxt = max(floor_t, nxt)
            if nxt == tb:
                break
            tb = nxt
        if best is None:
            # the solver's cheapest layout overflows, but another cheap one may fit: try those
            sized = sorted((self.measure(ch), ch) for ch in [self.cheapest(), *self.extra])
            size, ch = sized[0]
            if size > model_budget:
                raise InfeasibleBudget(model_budget, size, f"model artifact with codec {self.codec or '?'}")
            best = (self.loss(ch), -size, ch)
        choice = self.spend_headroom(best[2], model_budget, trace, a=cm.a)
        return Fit(self.codec, choice, self.measure(choice), self.loss(choice), len(self.sizes) - packs0, trace, cm)

    def spend_headroom(self, choice: tuple[int, ...], model_budget: int, trace: list[dict[str, Any]], a: float = 1.0) -> tuple[int, ...]:
        """Exact repair: spend what is left of the budget on upgrades that lower (or keep) the predicted loss.

        Upgrades are ranked by loss reduction per predicted byte (table cost x the fitted slope `a`);
        as many as the room allows are applied together and checked by ONE exact pack (packs are the
        slow part); an overflow halves the batch, a single overflowing upgrade is dropped.
        """
        choice = tuple(choice)
        size = self.measure(choice)
        bad: set[tuple[int, int]] = set()
        limit = None  # max upgrades per batch after an overflow
        for _ in range(self.cfg.max_repair_packs):
            room = model_budget - size
            if room < 0 or room < self.cfg.target_headroom // 4:
                break
            opts = []
            for g in range(len(choice)):
                cur = choice[g]
                for j in range(len(self.costs[g])):
                    gain = self.losses[g][cur] - self.losses[g][j]
                    extra = a * (self.costs[g][j] - self.costs[g][cur])
                    # a zero-gain upgrade (e.g. fp16 -> fp32 where both measure harmless) only fills room:
                    # it comes after every real gain, largest first, and never raises the predicted loss
                    if j == cur or gain < 0 or (gain == 0 and extra <= 0) or (g, j) in bad or extra > room:
                        continue
                    opts.append((gain / max(extra, 1.0), gain, extra, g, j))
            if not opts:
                break
            opts.sort(reverse=True)
            picked: dict[int, int] = {}
            spent = 0.0
            for _, _, extra, g, j in opts:
                if g in picked or spent + extra > room:
                    continue
                picked[g] = j
                spent += extra
                if limit is not None and len(picked) >= limit:
                    break
            new = tuple(picked.get(g, c) for g, c in enumerate(choice))
            s = self.measure(new)
            ok = s <= model_budget
            trace.append({"repair": True, "upgrades": len(picked), "model_bytes": s, "fits": ok})
            if ok:
                choice, size, limit = new, s, None
            elif len(picked) == 1:
                bad.update(picked.items())
            else:
                limit = max(1, len(picked) // 2)
        return choice


# ------------------------------------------------------------------------------------------------
# the whole search


@dataclass
class SearchResult:
    """What the search chose and why."""

    codec: str
    specs: dict[str, TensorSpec]  # chosen spec per tensor
    policy: Any  # golfpack.packer.policy.Policy resolving to specs
    model_bytes: int
    code_bytes: int
    budget: int
    predicted_loss: float  # nats/token over the calibration batch, summed single-tensor deltas
    floor: int  # exact bytes of the cheapest layout (incl. code)
    fits: dict[str, Fit]  # per codec considered
    sens: dict[str, Any]  # sensitivity phase output
    tables: dict[str, dict[str, dict[str, int]]]  # cost tables per codec
    problem: Problem
    timings: dict[str, float]
    chosen: "Alternative | None" = None  # the selected layout (source, joint score)
    alternatives: list["Alternative"] = field(default_factory=list)  # every layout compared jointly

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.code_bytes

    @property
    def headroom(self) -> int:
        return self.budget - self.total_bytes

    @property
    def choice(self) -> tuple[int, ...]:
        """Candidate index per tensor of the chosen layout."""
        p = self.problem
        return tuple([s.label() for s in p.candidates[n]].index(self.specs[n].label()) for n in p.names)

    def report(self) -> dict[str, Any]:
        agreement = self.sens.get("agreement")
        return {
            "codec": self.codec,
            "budget": self.budget,
            "model_bytes": self.model_bytes,
            "code_bytes": self.code_bytes,
            "total_bytes": self.total_bytes,
            "headroom": self.headroom,
            "floor": self.floor,
            "objective": self.sens.get("objective"),
            "predicted_delta_loss": self.predicted_loss,
            "calib_base_loss": self.sens.get("base_loss"),
            "calib_tokens": self.sens.get("calib_tokens"),
            "proxy_vs_direct": agreement,
            "layout": {n: s.label() for n, s in self.specs.items()},
            "codecs": {c: {"model_bytes": f.model_bytes, "predicted_delta_loss": f.predicted_loss, "packs": f.packs,
                           "cost_model": {"a": f.cost_model.a, "b": f.cost_model.b, "points": f.cost_model.points}}
                       for c, f in self.fits.items()},
            "chosen_from": None if self.chosen is None else self.chosen.source,
            "joint_objective": None if self.chosen is None else self.chosen.joint,
            "alternatives": [a.to_dict() for a in self.alternatives],
            "timings": self.timings,
        }


def run_search(ckpt: str | Path, cfg: SearchConfig) -> SearchResult:
    """Phases 1-6 (see module doc); writes nothing but the cache."""
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    if cfg.budget <= 0:
        raise GolfpackError(f"--budget must be positive, got {cfg.budget}")
    p = load_problem(ckpt, cfg)
    codecs = _codecs(cfg.codecs)
    cache = Cache(cfg.cache_dir)
    floor, floor_codec, _ = floor_bytes(p, codecs)
    t["floor"] = time.perf_counter() - t0
    if cfg.budget < floor:
        raise InfeasibleBudget(cfg.budget, floor, f"layout (all tensors at their cheapest spec, codec {floor_codec}, code {p.code_bytes:,} bytes)")
    t1 = time.perf_counter()
    if cfg.calib == "self":
        cfg = dataclasses.replace(cfg, calib=str(self_calibration(p, cfg)))
    p.pin_calibration(cfg.calib)
    t["calibration"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    # one cost table, priced with the first codec; every codec's fit recalibrates it with exact packs
    table = cost_tables(p, codecs[:1], cache, progress=cfg.progress)[codecs[0]]
    tables = {c: table for c in codecs}
    t["costs"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    sens = sensitivity(p, cfg, cache)
    t["sensitivity"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    model_budget = cfg.budget - p.code_bytes
    fits: dict[str, Fit] = {}
    bar = progress_bar(total=len(codecs), desc="fit", unit="codec", enabled=cfg.progress)
    for c in codecs:
        try:
            fits[c] = Fitter.for_problem(p, c, tables[c], sens["deltas"], cfg).fit(model_budget)
        except InfeasibleBudget:
            pass  # this codec cannot reach the budget; another one did (the floor check passed)
        bar.update(1)
    bar.close()
    if not fits:
        raise InfeasibleBudget(cfg.budget, floor)
    t["fit"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    alts = alternatives(p, cfg, fits, tables, sens, model_budget) if cfg.select else []
    if alts:
        score = joint_scorer(p, cfg)
        score(alts)
        chosen = pick(alts)
        if model_budget - chosen.model_bytes >= cfg.target_headroom:
            # a preset (or an answer fitted for another objective) can leave room: spend it like the
            # solver's own answers, each step checked by an exact pack, then score the result jointly too
            fitter = Fitter.for_problem(p, chosen.codec, tables[chosen.codec], sens["deltas"], cfg)
            ch = fitter.spend_headroom(chosen.choice, model_budget, [], a=fits[chosen.codec].cost_model.a if chosen.codec in fits else 1.0)
            if ch != chosen.choice:
                rep = Alternative(f"{chosen.source}+repair", chosen.codec, ch, fitter.measure(ch), fitter.loss(ch))
                score([rep])
                alts.append(rep)
                chosen = pick(alts)
    else:
        chosen = min((Alternative(f"solver:{f.codec}", f.codec, f.choice, f.model_bytes, f.predicted_loss) for f in fits.values()),
                     key=lambda a: (a.predicted_loss, a.model_bytes))
    t["select"] = time.perf_counter() - t1
    specs = p.specs_of(chosen.choice)
    return SearchResult(
        codec=chosen.codec, specs=specs, policy=p.policy_of(specs), model_bytes=chosen.model_bytes,
        code_bytes=p.code_bytes, budget=cfg.budget, predicted_loss=chosen.predicted_loss, floor=floor, fits=fits,
        sens=sens, tables=tables, problem=p, timings=t, chosen=chosen, alternatives=alts,
    )


# ------------------------------------------------------------------------------------------------
# phase 6: joint selection


@dataclass
class Alternative:
    """One complete layout that fits, and how it scores when ALL its tensors are quantized at once."""

    source: str  # where it came from: solver:<codec>, proxy:<codec>, greedy:<codec>, preset:<name>
    codec: str
    choice: tuple[int, ...]  # candidate index per tensor
    model_bytes: int  # exact artifact bytes
    predicted_loss: float  # sum of single-tensor deltas (what the solver minimised)
    joint: float = math.nan  # objective measured with every tensor quantized, on held-out calibration tokens

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "codec": self.codec, "model_bytes": self.model_bytes,
                "predicted_loss": self.predicted_loss, "joint": self.joint}


JOINT_TIE_ABS = 1e-6  # nats/token: joint scores closer than this (or JOINT_TIE_REL of the best) are a tie
JOINT_TIE_REL = 0.01


def pick(alts: list[Alternative]) -> Alternative:
    """The lowest joint damage; within measurement resolution of it, the layout that stores the most bytes
    (fewer bytes never buys fidelity, and the budget is there to be spent)."""
    best = min(a.joint for a in alts)
    near = [a for a in alts if a.joint <= best + max(JOINT_TIE_ABS, JOINT_TIE_REL * abs(best))]
    return max(near, key=lambda a: (a.model_bytes, -a.joint))


def preset_choice(p: Problem, name: str) -> tuple[int, ...] | None:
    """A policy preset as candidate indices, or None if one of its specs is not a candidate here."""
    from golfpack.packer.policy import Policy

    specs = Policy.preset(name).resolve(p.state_dict)
    out = []
    for n in p.names:
        labels = [s.label() for s in p.candidates[n]]
        if specs[n].label() not in labels:
            return None
        out.append(labels.index(specs[n].label()))
    return tuple(out)


def alternatives(p: Problem, cfg: SearchConfig, fits: dict[str, Fit], tables: dict[str, Any], sens: dict[str, Any], model_budget: int) -> list[Alternative]:
    """Fitting layouts worth a joint measurement: the solver's answer per codec, the answers under the
    proxy estimate and the greedy solver (best codec), and every preset that fits.

    Summed single-tensor deltas ignore interactions (quantizing many tensors at once usually hurts
    more than the sum), so these are compared on what actually matters: the joint effect."""
    from golfpack.packer import sensitivity as S
    from golfpack.packer.policy import PRESETS

    deltas = sens["deltas"]

    def pred(choice: tuple[int, ...]) -> float:
        return sum(deltas[n][p.candidates[n][j].label()] for n, j in zip(p.names, choice))

    out = [Alternative(f"solver:{f.codec}", f.codec, tuple(f.choice), f.model_bytes, f.predicted_loss) for f in fits.values()]
    best = min(fits.values(), key=lambda f: (f.predicted_loss, f.model_bytes))
    extra: list[tuple[str, dict[str, dict[str, float]], str]] = [(f"greedy:{best.codec}", deltas, "greedy")]
    if sens.get("proxy") is not None and cfg.sensitivity != "proxy":
        extra.append((f"proxy:{best.codec}", S.regularize({n: dict(sens["proxy"][n]) for n in p.names}), cfg.solver))
    for source, table, method in extra:
        sub = SearchConfig(**{**cfg.__dict__, "solver": method})
        try:
            f = Fitter.for_problem(p, best.codec, tables[best.codec], table, sub).fit(model_budget)
        except InfeasibleBudget:
            continue
        out.append(Alternative(source, best.codec, tuple(f.choice), f.model_bytes, pred(tuple(f.choice))))
    for name in PRESETS:
        ch = preset_choice(p, name)
        if ch is None:
            continue
        sizes = {c: len(p.encode(ch, c)) for c in fits}
        c = min(sizes, key=sizes.__getitem__)
        if sizes[c] <= model_budget:
            out.append(Alternative(f"preset:{name}", c, ch, sizes[c], pred(ch)))
    uniq: dict[tuple[tuple[int, ...], str], Alternative] = {}
    for a in out:
        uniq.setdefault((a.choice, a.codec), a)
    return list(uniq.values())


def joint_scorer(p: Problem, cfg: SearchConfig) -> Callable[[list[Alternative]], None]:
    """A function that fills `joint` for layouts: the objective with every tensor of the layout quantized,
    on held-out calibration. The batch and the raw model's predictions are set up once."""
    from golfpack.model import build_model
    from golfpack.packer import sensitivity as S

    batch = S.make_batch(S.calib_halves(cfg.calib, tokenizer=cfg.tokenizer)[1], cfg.select_batch, cfg.calib_seq, vocab_size=p.config.vocab_size)
    model = build_model(p.config, p.state_dict, device=cfg.device)
    ref = S.reference_logprobs(model, batch, device=cfg.device)
    base, _ = S.batch_scores(model, batch, None, device=cfg.device)
    scored: dict[tuple[int, ...], float] = {}

    def score(alts: list[Alternative]) -> None:
        for a in progress_bar(alts, desc="select (joint)", unit="layout", enabled=cfg.progress):
            if a.choice not in scored:
                sd = {n: p.record(n, p.candidates[n][j]).dequantize() for n, j in zip(p.names, a.choice)}
                nll, kl = S.batch_scores(build_model(p.config, sd, device=cfg.device), batch, ref, device=cfg.device)
                scored[a.choice] = kl if cfg.objective == "kl" else nll - base
            a.joint = scored[a.choice]

    return score


__all__ = [
    "DEFAULT_TARGET_HEADROOM",
    "Cache",
    "CostModel",
    "Fit",
    "Alternative",
    "Fitter",
    "Problem",
    "SearchConfig",
    "SearchResult",
    "cost_tables",
    "exact_name_pattern",
    "fit_cost_model",
    "floor_bytes",
    "layout_policy",
    "load_problem",
    "preset_choice",
    "run_search",
    "sensitivity",
    "write_policy",
]
