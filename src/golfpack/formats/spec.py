"""TensorSpec: how one tensor is stored. The unit that policies choose and the search optimises.

Text form (used by policies, `--set`, reports): `int6`, `int6:mse`, `int8:absmax`, `int6+gptq`,
`int5:mse+gptq`, `fp16`, `bf16`, `fp32`, `exact` (bit-exact passthrough of the original dtype, e.g.
integer tensors). `int<b>` alone means the baseline's `quantile` clip; `+gptq` chooses the levels
with Hessian-aware rounding on that clip rule's scales (it needs calibration tokens to pack).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from golfpack.errors import UsageError
from golfpack.formats.qgv3_constants import LEVEL_BITS, qmax

INT_BITS = LEVEL_BITS
CLIP_RULES = ("absmax", "quantile", "mse")
PASSTHROUGH_DTYPES = ("fp16", "bf16", "fp32", "exact")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor's storage choice."""

    kind: str  # "int" (symmetric per-row integer levels + fp16 scales) or "passthrough"
    bits: int = 8  # integer bit width 2..8; levels are -(2^(b-1)-1) .. 2^(b-1)-1 (kind == "int")
    clip: str = "quantile"  # clip rule for kind == "int" (sets the per-row scales): absmax | quantile | mse
    dtype: str = "fp16"  # storage dtype for kind == "passthrough": fp16 | bf16 | fp32 | exact
    gptq: bool = False  # kind == "int": Hessian-aware (GPTQ) rounding instead of round-to-nearest

    def __post_init__(self) -> None:
        if self.kind == "int":
            if self.bits not in INT_BITS:
                raise UsageError(f"bits must be 2..8, got {self.bits}", param="bits")
            if self.clip not in CLIP_RULES:
                raise UsageError(f"clip rule must be one of {', '.join(CLIP_RULES)}, got {self.clip!r}", param="clip")
        elif self.kind == "passthrough":
            if self.gptq:
                raise UsageError("gptq applies to integer specs only", param="gptq")
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
        base = f"int{self.bits}" if self.clip == "quantile" else f"int{self.bits}:{self.clip}"
        return base + "+gptq" if self.gptq else base

    def rounded(self) -> TensorSpec:
        """The same grid with round-to-nearest levels (what QAT simulates: it has no Hessian)."""
        return replace(self, gptq=False) if self.gptq else self

    @classmethod
    def parse(cls, text: str) -> TensorSpec:
        """Parse `int6`, `int6:mse`, `int6+gptq`, `fp16`, `exact`, ... (UsageError lists the accepted forms)."""
        t = text.strip().lower()
        if t in PASSTHROUGH_DTYPES:
            return cls(kind="passthrough", dtype=t)
        body, plus, suffix = t.partition("+")
        head, _, clip = body.partition(":")
        if head.startswith("int") and head[3:].isdigit() and (not plus or suffix == "gptq"):
            return cls(kind="int", bits=int(head[3:]), clip=clip or "quantile", gptq=bool(plus))
        raise UsageError(
            f"cannot parse tensor spec {text!r}: use int2..int8 with an optional ':absmax|quantile|mse' and an "
            f"optional '+gptq', or one of {', '.join(PASSTHROUGH_DTYPES)}"
        )

    def __str__(self) -> str:
        return self.label()
