"""SearchConfig: the knobs of one search, checked when it is built (not minutes later, mid-search)."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, fields
from typing import Any

from golfpack.budget.sensitivity import OBJECTIVES  # the damage measures measure_direct yields
from golfpack.errors import UsageError

DEFAULT_TARGET_HEADROOM = 2048  # stop fitting once the unused budget is below this many bytes
SENSITIVITY_MODES = ("direct", "proxy", "both")
SOLVERS = ("dp", "greedy", "best")
PASSTHROUGH_DTYPES = ("fp16", "bf16", "fp32")
ALL_CODECS = ("lzma", "brotli", "zstd")  # what codecs=('all',) means (those available, in this order)


@dataclass
class SearchConfig:
    """Knobs of one search (CLI flags map 1:1). Every field is validated at construction."""

    budget: int  # byte cap for model artifact + code files
    code: list[str] = field(default_factory=list)  # submission code files, counted byte for byte
    calib: str = "self"  # calibration tokens: 'self' (the model's own samples), a train-shard glob, or 'pydoc' (never val)
    tokenizer: str | None = None  # sentencepiece model (for calib 'pydoc'; its BOS id for 'self')
    self_sequences: int = 128  # calib 'self': sampled sequences (of calib_seq tokens; half measure, half select)
    self_seed: int = 0  # calib 'self': sampling seed
    calib_out: str | None = None  # calib 'self': where the samples are written as a shard (the policy points there)
    codecs: tuple[str, ...] = ("lzma+rans",)  # artifact codecs to consider (each is fitted; 'a+b' = per stream the smaller;
    # the first also prices the cost tables); 'all' = lzma, brotli, zstd as available
    bits: tuple[int, ...] = (8, 7, 6, 5, 4)  # integer widths offered to every float tensor
    clips: tuple[str, ...] = ("quantile", "mse")  # clip rules offered for every width
    gptq: bool = True  # also offer every matrix width x clip with GPTQ rounding (Hessians from the calibration tokens)
    gptq_batch: int = 32  # calibration sequences (of calib_seq tokens) for the GPTQ Hessians
    # the GPTQ Hessians' tokens when they should differ from `calib` (which still drives measurement and selection):
    # 'pydoc' (real text, needs `tokenizer`) or a train-shard glob; None = the calib tokens
    gptq_calib: str | None = None
    passthrough: tuple[str, ...] = ("fp16",)  # lossy passthrough dtypes offered besides the tensor's own
    calib_batch: int = 16  # calibration sequences for direct measurement (8 -> 16 cut nolanvild's gap at 90% of int6 bytes 0.00517 -> 0.00451 bpb)
    calib_seq: int = 256  # tokens per calibration sequence
    sensitivity: str = "both"  # direct | proxy (Taylor: gradient + diagonal Fisher) | both (direct drives, proxy's rank agreement reported)
    proxy_batch: int = 32  # calibration sequences for the proxy's gradient statistics
    # what a tensor's damage means: kl = KL(raw || quantized) predictions, nll = delta loss on the calibration tokens,
    # auto = kl, then nll where kl's answer loses mostly first order on held-out real text (docs/search.md, "When delta NLL")
    objective: str = "kl"
    select: bool = True  # pick the final layout among solver/proxy/greedy/preset alternatives by JOINT held-out loss
    select_batch: int = 32  # held-out calibration sequences for that joint measurement
    target_headroom: int = DEFAULT_TARGET_HEADROOM  # fit until budget - total < this
    max_fit_packs: int = 12  # exact packs allowed to fit the solver's budget (per codec)
    max_repair_packs: int = 8  # exact packs allowed to spend the remaining headroom (per codec)
    screen: bool = True  # sensitivity 'both': measure directly only candidates the proxy's own solution puts within reach (+ a sample)
    screen_margin: float = 2.0  # kept: a proxy error of at most this factor would put the candidate in its tensor's solution
    screen_sample: float = 0.05  # fraction of screened-out candidates measured anyway (the proxy's honesty check; <= max_direct / 10)
    # direct measurements at most (screened search), smallest proxy error factor first (~1 s each at 21.8M on a CPU
    # core); None = no cap. Off by default: a cap of 300 on nolanvild (532 within reach) raised the held-out loss 9%
    max_direct: int | None = None
    # screened search: the candidates within reach are first measured on this many of the calib_batch sequences (evenly
    # spaced); only those the coarse values still put within fine_margin of the solution are measured on the rest too
    # (the others keep their coarse value). 0 or >= calib_batch: one pass on every sequence. 4 -> 2 rows with fine margin
    # 1.5 -> 1.1 cut the 21.8M search's direct forwards by half at the same frontier (docs/search.md, "The screen")
    coarse_batch: int = 2
    fine_margin: float = 1.1  # the second screen's margin (over coarse values: a far smaller error than the proxy's)
    prefix_cache: bool = True  # direct forwards rerun only the blocks a candidate can change (same numbers, less work)
    workers: int = 0  # processes for the cost tables (quantize + encode each candidate); 0 = one per CPU core (at most 8)
    solver: str = "dp"  # dp | greedy | best
    cache_dir: str | None = None  # where measurements are kept between searches
    device: str = "cpu"  # torch device for sensitivity forwards
    num_heads: int | None = None  # override the inferred head count
    activation: str | None = None  # MLP activation (not inferable from shapes)
    progress: bool | None = None  # progress bars on stderr: None = when it is a terminal

    def __post_init__(self) -> None:
        from golfpack.formats.spec import CLIP_RULES, INT_BITS
        from golfpack.model import ACTIVATIONS

        _int("budget", self.budget, 1)
        for name in ("self_sequences", "gptq_batch", "calib_batch", "calib_seq", "proxy_batch", "select_batch", "max_fit_packs"):
            _int(name, getattr(self, name), 1)
        for name in ("self_seed", "target_headroom", "max_repair_packs", "coarse_batch"):
            _int(name, getattr(self, name), 0)
        for name in ("num_heads", "max_direct"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name), 1)
        for name in ("calib", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise UsageError(f"{name} must be a non-empty string, got {getattr(self, name)!r}", param=name)
        if self.gptq_calib is not None and (not isinstance(self.gptq_calib, str) or not self.gptq_calib or self.gptq_calib == "self"):
            raise UsageError(f"gptq_calib must be 'pydoc', a train-shard glob or None (the calib tokens), got {self.gptq_calib!r}",
                             param="gptq_calib")
        if self.gptq_calib == "pydoc" and not self.tokenizer:
            raise UsageError("gptq_calib 'pydoc' needs a tokenizer (the sentencepiece .model that turns the text into tokens)",
                             param="tokenizer")
        for name in ("tokenizer", "calib_out", "cache_dir"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise UsageError(f"{name} must be a path string or None, got {v!r}", param=name)
        _int("workers", self.workers, 0)
        for name, lo, hi in (("screen_margin", 1.0, math.inf), ("screen_sample", 0.0, 1.0), ("fine_margin", 1.0, math.inf)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
                raise UsageError(f"{name} must be a number in [{lo:g}, {hi:g}], got {v!r}", param=name)
        for name in ("gptq", "select", "screen", "prefix_cache"):
            if not isinstance(getattr(self, name), bool):
                raise UsageError(f"{name} must be True or False, got {getattr(self, name)!r}", param=name)
        if self.progress is not None and not isinstance(self.progress, bool):
            raise UsageError(f"progress must be True, False or None, got {self.progress!r}", param="progress")
        _choice("sensitivity", self.sensitivity, SENSITIVITY_MODES)
        _choice("objective", self.objective, (*OBJECTIVES, "auto"))
        _choice("solver", self.solver, SOLVERS)
        if self.activation is not None:
            _choice("activation", self.activation, ACTIVATIONS)
        if isinstance(self.code, str) or not all(isinstance(c, str) for c in self.code):
            raise UsageError(f"code must be a list of file paths, got {self.code!r}", param="code")
        self.code = list(self.code)
        self.bits = _members("bits", self.bits, tuple(INT_BITS), empty_ok=False)
        self.clips = _members("clips", self.clips, CLIP_RULES, empty_ok=False)
        self.passthrough = _members("passthrough", self.passthrough, PASSTHROUGH_DTYPES, empty_ok=True)
        from golfpack.packer.pack import is_codec

        sets = tuple(c for c in self.codecs if isinstance(c, str) and "+" in c and is_codec(c))  # 'lzma+rans': per stream, the smaller
        self.codecs = _members("codecs", self.codecs, (*available_codecs(), *sets, "best", "all"), empty_ok=True)

    def codec_list(self) -> list[str]:
        """The codecs the search fits, in order: `codecs` without repeats; empty or 'all' = every available one."""
        avail = available_codecs()
        if not self.codecs or "all" in self.codecs:
            return [c for c in ALL_CODECS if c in avail]
        return list(dict.fromkeys(self.codecs))

    def replace(self, **changes: Any) -> SearchConfig:
        """A copy with `changes` applied (validated like a new one)."""
        return SearchConfig(**{**{f.name: getattr(self, f.name) for f in fields(self)}, **changes})


def available_codecs() -> list[str]:
    from golfpack.packer.pack import available_codecs as avail  # the one codec resolution pack uses too

    return avail()


def _int(name: str, v: Any, lo: int) -> None:
    if isinstance(v, bool):
        raise UsageError(f"{name} must be an integer, got {v!r}", param=name)
    try:
        n = operator.index(v)
    except TypeError:
        raise UsageError(f"{name} must be an integer, got {v!r}", param=name) from None
    if n < lo:
        raise UsageError(f"{name} must be {'positive' if lo == 1 else f'at least {lo}'}, got {v}", param=name)


def _choice(name: str, v: Any, allowed: tuple[str, ...]) -> None:
    if v not in allowed:
        raise UsageError(f"{name} must be one of {', '.join(allowed)}, got {v!r}", param=name)


def _members(name: str, v: Any, allowed: tuple[Any, ...], *, empty_ok: bool) -> tuple[Any, ...]:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__iter__"):
        raise UsageError(f"{name} must be a list of {', '.join(map(str, allowed))}, got {v!r}", param=name)
    out = tuple(v)
    bad = [x for x in out if isinstance(x, bool) or type(x) is not type(allowed[0]) or x not in allowed]
    if bad or (not out and not empty_ok):
        what = f"unknown or unavailable {name} {', '.join(map(repr, bad))}" if bad else f"{name} must not be empty"
        raise UsageError(f"{what}: use {', '.join(map(str, allowed))}", param=name)
    return out


__all__ = ["DEFAULT_TARGET_HEADROOM", "OBJECTIVES", "SENSITIVITY_MODES", "SOLVERS", "SearchConfig"]
