"""TensorSpec: how one tensor is stored. The unit that policies choose and the search optimises.

Text form (used by policies, `--set`, reports): `int6`, `int6:mse`, `int8:quantile`, `fp16`, `bf16`,
`fp32`, `exact` (bit-exact passthrough of the original dtype, e.g. integer tensors).
"""

from __future__ import annotations

from dataclasses import dataclass

INT_BITS = range(2, 9)
CLIP_RULES = ("absmax", "quantile", "mse", "gptq")
PASSTHROUGH_DTYPES = ("fp16", "bf16", "fp32", "exact")


@dataclass(frozen=True)
class TensorSpec:
    """One tensor's storage choice."""

    kind: str  # "int" (symmetric per-row integer levels + fp16 scales) or "passthrough"
    bits: int = 8  # integer bit width 2..8; levels are -(2^(b-1)-1) .. 2^(b-1)-1 (kind == "int")
    clip: str = "quantile"  # clip rule for kind == "int": absmax | quantile | mse | gptq
    dtype: str = "fp16"  # storage dtype for kind == "passthrough": fp16 | bf16 | fp32 | exact

    def __post_init__(self) -> None:
        if self.kind == "int":
            if self.bits not in INT_BITS:
                raise ValueError(f"bits must be 2..8, got {self.bits}")
            if self.clip not in CLIP_RULES:
                raise ValueError(f"clip rule must be one of {', '.join(CLIP_RULES)}, got {self.clip!r}")
        elif self.kind == "passthrough":
            if self.dtype not in PASSTHROUGH_DTYPES:
                raise ValueError(f"passthrough dtype must be one of {', '.join(PASSTHROUGH_DTYPES)}, got {self.dtype!r}")
        else:
            raise ValueError(f"kind must be 'int' or 'passthrough', got {self.kind!r}")

    @property
    def qmax(self) -> int:
        """Largest level magnitude: 2^(bits-1) - 1 (127 for int8, 31 for int6)."""
        return (1 << (self.bits - 1)) - 1

    def label(self) -> str:
        if self.kind == "passthrough":
            return self.dtype
        return f"int{self.bits}" if self.clip == "quantile" else f"int{self.bits}:{self.clip}"

    @classmethod
    def parse(cls, text: str) -> "TensorSpec":
        """Parse `int6`, `int6:mse`, `fp16`, `exact`, ... (raises ValueError with the accepted forms)."""
        t = text.strip().lower()
        if t in PASSTHROUGH_DTYPES:
            return cls(kind="passthrough", dtype=t)
        head, _, clip = t.partition(":")
        if head.startswith("int") and head[3:].isdigit():
            return cls(kind="int", bits=int(head[3:]), clip=clip or "quantile")
        raise ValueError(
            f"cannot parse tensor spec {text!r}: use int2..int8 with an optional ':absmax|quantile|mse|gptq', "
            f"or one of {', '.join(PASSTHROUGH_DTYPES)}"
        )

    def __str__(self) -> str:
        return self.label()
