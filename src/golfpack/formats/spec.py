"""TensorSpec: how one tensor is stored. The unit that policies choose and the search optimises.

Text form (used by policies, `--set`, reports): `int6`, `int6:mse`, `int8:absmax`, `int6+gptq`,
`int5:mse+gptq`, `int6:sd12`, `int6:hmse`, `int6:g64`, `int5:g32:sd12+gptq`, `fp16`, `bf16`, `fp32`,
`exact` (bit-exact passthrough of the original dtype, e.g. integer tensors). `int<b>` alone means the
baseline's `quantile` clip (per row only: it floors the scale at 1/qmax, the seed-exact rule); `+gptq`
chooses the levels with Hessian-aware rounding on that clip rule's scales (it needs calibration tokens).

Clip rules: `quantile` (baseline, floored), `absmax`, `mse` (per-row clip search), `sd<k>` (SDClip: scale
= k * std(row or group) / qmax, k in (0, 64], at most one decimal), `hmse` (clip search weighted by diag(H)
of the layer input, llama.cpp's imatrix; plain `mse` where no Hessian is given).
`g<N>` (N in 32, 64, 128, 256): one fp16 scale per (row, group of N input columns) instead of per row;
a group spec's default clip is `absmax` (`quantile` is per-row only).
`g<N>s<k>` (k in 2..8): quantized sub-scales (llama.cpp k-quant style): each group's scale is an unsigned
k-bit integer 1..2^k-1 times one fp16 scale per row, e.g. `int6:g32s6`, `int5:g64s6:mse+gptq`.
Canonical label order: `int<b>[:g<N>[s<k>]][:<clip>][+gptq][+out<k>][+lqer<r>]`; the clip is left out when it is
the default (quantile per row, absmax per group).
`+lqer<r>` (r in 1..64, after `+gptq` when both): a rank-r correction of the quantization error of a 2-D
tensor, E = W - dequant(Q(W)) ~ A @ B by truncated SVD, the factors stored as int8 levels with one fp16
scale per component (docs/qgv3.md section 8b); the loader adds A @ B back. The factor width is the
file's (`LQER_BITS` is what the packer writes). Sub-scales and LQER do not combine (not measured, not offered).
`+out<k>` (k in 1..50, after `+gptq`, SpQR-style outliers): after rounding (GPTQ's or round-to-nearest), the
ceil(numel * k / 1000) weights with the largest |W - dequant(Q(W))| are stored as (flat index, fp16 of W) pairs in
a sparse side stream (docs/qgv3.md section 8d); the loader puts those values in place of the dequantized ones,
e.g. `int4:g64+gptq+out3`. Outliers and LQER do not combine (not measured: UsageError).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from golfpack.errors import UsageError
from golfpack.formats.qgv3_constants import LEVEL_BITS, LQER_RANKS, OUTLIER_RATES, qmax

INT_BITS = LEVEL_BITS
CLIP_RULES = ("absmax", "quantile", "mse", "hmse")  # fixed names; plus `sd<k>` (SDClip, see is_sd_clip)
GROUP_SIZES = (32, 64, 128, 256)  # `g<N>` group sizes along the input dimension (0 = one scale per row)
SUBSCALE_BITS = range(2, 9)  # `s<k>` widths of quantized sub-scales (0 = fp16 group scales)
_GROUP_RE = re.compile(r"g(\d+)(?:s(\d))?")
SD_MAX_K = 64.0  # largest SDClip multiplier accepted
_SD_RE = re.compile(r"sd(\d{1,2}(?:\.\d)?)")
_LQER_RE = re.compile(r"lqer([1-9]\d?)")
_OUT_RE = re.compile(r"out([1-9]\d?)")
LQER_MAX_RANK = LQER_RANKS.stop - 1  # largest `+lqer<r>` rank
OUTLIER_MAX = OUTLIER_RATES.stop - 1  # largest `+out<k>` rate (outliers kept per 1,000 weights)
LQER_BITS = 8  # integer width of the LQER factors the packer writes (int8: measured best at equal bytes, docs/policies.md)


def sd_k(clip: str) -> float | None:
    """The k of an SDClip rule `sd<k>` (canonical spelling: no leading zeros, no trailing `.0`), else None."""
    m = _SD_RE.fullmatch(clip)
    if m is None:
        return None
    k = float(m.group(1))
    if not (0.0 < k <= SD_MAX_K) or clip != "sd" + _fmt_k(k):
        return None
    return k


def _fmt_k(k: float) -> str:
    return str(int(k)) if k == int(k) else f"{k:.1f}"
PASSTHROUGH_DTYPES = ("fp16", "bf16", "fp32", "exact")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor's storage choice."""

    kind: str  # "int" (symmetric per-row integer levels + fp16 scales) or "passthrough"
    bits: int = 8  # integer bit width 2..8; levels are -(2^(b-1)-1) .. 2^(b-1)-1 (kind == "int")
    clip: str = "quantile"  # clip rule for kind == "int" (sets the per-row scales): absmax | quantile | mse
    dtype: str = "fp16"  # storage dtype for kind == "passthrough": fp16 | bf16 | fp32 | exact
    gptq: bool = False  # kind == "int": Hessian-aware (GPTQ) rounding instead of round-to-nearest
    group: int = 0  # kind == "int": 0 = one scale per row; else one scale per (row, `group` input columns)
    lqer: int = 0  # kind == "int": 0 = none; else the rank of the low-rank error correction (+lqer<r>, 1..64)
    subscale: int = 0  # kind == "int" with a group: 0 = fp16 group scales; k = k-bit sub-scales x one fp16 scale per row
    outliers: int = 0  # kind == "int": 0 = none; else k: ceil(numel k / 1000) largest-error weights kept as fp16 (+out<k>)

    def __post_init__(self) -> None:
        if self.kind == "int":
            if self.bits not in INT_BITS:
                raise UsageError(f"bits must be 2..8, got {self.bits}", param="bits")
            if self.clip not in CLIP_RULES and sd_k(self.clip) is None:
                raise UsageError(f"clip rule must be one of {', '.join(CLIP_RULES)} or sd<k> (k in (0, {SD_MAX_K:g}], "
                                 f"e.g. sd12), got {self.clip!r}", param="clip")
            if self.group not in (0, *GROUP_SIZES):
                raise UsageError(f"group must be 0 (per row) or one of {', '.join(map(str, GROUP_SIZES))}, got {self.group!r}",
                                 param="group")
            if self.subscale and (not self.group or self.subscale not in SUBSCALE_BITS):
                raise UsageError(f"subscale must be 0 or 2..8 with a group (e.g. int6:g32s6), got {self.subscale!r}", param="subscale")
            if self.group and self.clip == "quantile":
                raise UsageError("the quantile clip (the baseline's floored per-row rule) has no group form; use absmax, mse, "
                                 "hmse or sd<k> with g<N>", param="clip")
            if isinstance(self.lqer, bool) or not isinstance(self.lqer, int) or not (self.lqer == 0 or self.lqer in LQER_RANKS):
                raise UsageError(f"lqer rank must be 0 (none) or an int in 1..{LQER_MAX_RANK}, got {self.lqer!r}", param="lqer")
            if isinstance(self.outliers, bool) or not isinstance(self.outliers, int) or not (
                    self.outliers == 0 or self.outliers in OUTLIER_RATES):
                raise UsageError(f"outliers must be 0 (none) or an int in 1..{OUTLIER_MAX} (kept per 1,000 weights), "
                                 f"got {self.outliers!r}", param="outliers")
            if self.outliers and self.lqer:
                raise UsageError("+out<k> does not combine with +lqer<r> (not measured together); drop one of them, "
                                 "e.g. int4:g64+gptq+out3", param="outliers")
            if self.lqer and self.subscale:
                raise UsageError("+lqer<r> does not combine with quantized sub-scales (g<N>s<k>); use fp16 group scales (g<N>)",
                                 param="lqer")
        elif self.kind == "passthrough":
            if self.gptq:
                raise UsageError("gptq applies to integer specs only", param="gptq")
            if self.group or self.subscale:
                raise UsageError("group and subscale apply to integer specs only", param="group")
            if self.lqer or self.outliers:
                raise UsageError("lqer and outliers apply to integer specs only", param="lqer" if self.lqer else "outliers")
            if self.dtype not in PASSTHROUGH_DTYPES:
                raise UsageError(f"passthrough dtype must be one of {', '.join(PASSTHROUGH_DTYPES)}, got {self.dtype!r}", param="dtype")
        else:
            raise UsageError(f"kind must be 'int' or 'passthrough', got {self.kind!r}", param="kind")

    @property
    def qmax(self) -> int:
        """Largest level magnitude: 2^(bits-1) - 1 (127 for int8, 31 for int6); qgv3_constants.qmax."""
        return qmax(self.bits)

    def label(self) -> str:
        if self.kind == "passthrough":
            return self.dtype
        base = f"int{self.bits}"
        if self.group:
            base += f":g{self.group}" + (f"s{self.subscale}" if self.subscale else "")
        if self.clip != ("absmax" if self.group else "quantile"):
            base += f":{self.clip}"
        if self.gptq:
            base += "+gptq"
        if self.outliers:
            base += f"+out{self.outliers}"
        return base + f"+lqer{self.lqer}" if self.lqer else base

    @property
    def needs_hessian(self) -> bool:
        """True when packing reads the layer's input Hessian: GPTQ rounding or the diag(H)-weighted clip."""
        return self.kind == "int" and (self.gptq or self.clip == "hmse")

    def rounded(self) -> TensorSpec:
        """The same grid with round-to-nearest levels, no LQER correction and no outliers (what QAT simulates: it has
        no Hessian, and the correction and the outliers are fitted to the final weights at pack time)."""
        return replace(self, gptq=False, lqer=0, outliers=0) if (self.gptq or self.lqer or self.outliers) else self

    @classmethod
    def parse(cls, text: str) -> TensorSpec:
        """Parse `int6`, `int6:mse`, `int6+gptq`, `fp16`, `exact`, ... (UsageError lists the accepted forms)."""
        t = text.strip().lower()
        if t in PASSTHROUGH_DTYPES:
            return cls(kind="passthrough", dtype=t)
        body, _, suffix = t.partition("+")
        head, *parts = body.split(":")
        bad = UsageError(
            f"cannot parse tensor spec {text!r}: use int2..int8 with an optional ':g32|g64|g128|g256' (optionally with "
            f"quantized sub-scales 's2'..'s8', e.g. ':g32s6'), an optional "
            f"':absmax|quantile|mse|hmse|sd<k>' (in that order), an optional '+gptq', an optional '+out<k>' "
            f"(k in 1..{OUTLIER_MAX}) and an optional '+lqer<r>' (r in 1..{LQER_MAX_RANK}), in that order, or one of {', '.join(PASSTHROUGH_DTYPES)}"
        )
        if not (head.startswith("int") and head[3:].isdigit() and head[3:] == str(int(head[3:]))):
            raise bad
        plus = suffix.split("+") if suffix or "+" in t else []
        if "" in plus:
            raise bad
        gptq = bool(plus) and plus[0] == "gptq"
        rest = plus[gptq:]
        rank = out = 0
        if rest and (m := _OUT_RE.fullmatch(rest[0])) is not None:
            if int(m.group(1)) not in OUTLIER_RATES:
                raise bad
            out, rest = int(m.group(1)), rest[1:]
        if rest:
            m = _LQER_RE.fullmatch(rest[0])
            if len(rest) != 1 or m is None or int(m.group(1)) not in LQER_RANKS:
                raise bad
            rank = int(m.group(1))
        group, sub, clip = 0, 0, None
        if parts and parts[0].startswith("g"):
            m = _GROUP_RE.fullmatch(parts.pop(0))
            if m is None or m.group(1) not in {str(g) for g in GROUP_SIZES} or (m.group(2) and int(m.group(2)) not in SUBSCALE_BITS):
                raise bad
            group, sub = int(m.group(1)), int(m.group(2) or 0)
        if parts:
            clip = parts.pop(0)
        if parts or clip == "":
            raise bad
        return cls(kind="int", bits=int(head[3:]), clip=clip or ("absmax" if group else "quantile"), gptq=gptq, group=group,
                   subscale=sub, lqer=rank, outliers=out)

    def __str__(self) -> str:
        return self.label()
