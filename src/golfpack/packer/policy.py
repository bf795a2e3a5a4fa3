"""Policies: an ordered list of rules mapping tensor names / shape classes to a TensorSpec.

The first rule that matches a tensor wins; a policy always ends in a catch-all `default`. A rule
matches on ANY of its name patterns (shell globs by default, `re:` prefix for a regular expression,
matched against the full name with `re.fullmatch`) AND on all the class conditions it sets:

    match      glob(s) / `re:` regex(es) on the name (default "*")
    control    True/False: the name contains one of the baseline's CONTROL_TENSOR_NAME_PATTERNS
    ndim       int or list of ints
    min_numel / max_numel   inclusive element-count bounds
    dtype      "float" | "nonfloat" | a torch dtype name ("float32", "bfloat16", ...) or a list of those

Integer (non-float) tensors are always stored `exact` whatever the rules say: there is nothing to
quantize and a lossy store would corrupt them.

Policies serialize (`to_dict`) into the artifact header so a pack can be replayed; `Policy.load`
reads the same dict from a JSON or TOML file. See docs/policies.md.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from golfpack.errors import UsageError
from golfpack.formats.policy_schema import POLICY_KEYS, RULE_KEYS
from golfpack.formats.spec import TensorSpec
from golfpack.model import CONTROL_TENSOR_NAME_PATTERNS

# The baseline keeps every float tensor with at most this many elements unquantized.
BASELINE_KEEP_FLOAT_MAX_NUMEL = 65_536
# Our presets keep 2-D tensors this small in fp16: below it the per-row fp16 scales cost more than
# the integer levels save (a 2x128 matrix would pay 4 bytes of scales for 256 int6 levels).
TINY_MATRIX_MAX_NUMEL = 256

_RULE_KEYS = RULE_KEYS  # one definition with the reader's check of a stored policy (formats/policy_schema.py)


@dataclass(frozen=True)
class Rule:
    """One policy line: conditions -> spec. Unset conditions match everything."""

    spec: TensorSpec  # what matching tensors get
    match: tuple[str, ...] = ("*",)  # name patterns, any may match: globs, or "re:<regex>"
    control: bool | None = None  # require (True) / forbid (False) a control-tensor name
    ndim: tuple[int, ...] | None = None  # allowed numbers of dimensions
    min_numel: int | None = None  # inclusive lower bound on element count
    max_numel: int | None = None  # inclusive upper bound on element count
    dtype: tuple[str, ...] | None = None  # "float", "nonfloat" or torch dtype names

    def matches(self, name: str, t: Tensor) -> bool:
        if not any(_name_matches(p, name) for p in self.match):
            return False
        if self.control is not None and is_control_name(name) != self.control:
            return False
        if self.ndim is not None and t.ndim not in self.ndim:
            return False
        n = t.numel()
        if self.min_numel is not None and n < self.min_numel:
            return False
        if self.max_numel is not None and n > self.max_numel:
            return False
        if self.dtype is not None and not any(_dtype_matches(d, t) for d in self.dtype):
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"match": list(self.match) if len(self.match) != 1 else self.match[0]}
        for key in ("control", "min_numel", "max_numel"):
            if getattr(self, key) is not None:
                d[key] = getattr(self, key)
        if self.ndim is not None:
            d["ndim"] = list(self.ndim)
        if self.dtype is not None:
            d["dtype"] = list(self.dtype)
        d["spec"] = self.spec.label()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "rule") -> Rule:
        if not isinstance(d, dict):
            raise UsageError(f"{where}: a rule must be a table/object, got {type(d).__name__}")
        unknown = sorted(set(d) - _RULE_KEYS)
        if unknown:
            raise UsageError(f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(_RULE_KEYS))})")
        if "spec" not in d:
            raise UsageError(f"{where}: missing 'spec' (e.g. spec = \"int6\")")
        spec = _parse_spec(d["spec"], where)
        match = d.get("match", "*")
        match_t = (match,) if isinstance(match, str) else tuple(str(m) for m in match)
        for p in match_t:
            if p.startswith("re:"):
                try:
                    re.compile(p[3:])
                except re.error as e:
                    raise UsageError(f"{where}: bad regex {p[3:]!r}: {e}") from None
        ndim = d.get("ndim")
        dtype = d.get("dtype")
        if d.get("control") is not None and not isinstance(d["control"], bool):
            raise UsageError(f"{where}: control must be true or false, got {d['control']!r}")
        try:
            return cls(
                spec=spec,
                match=match_t,
                control=d.get("control"),
                ndim=None if ndim is None else tuple(int(x) for x in ([ndim] if isinstance(ndim, int) else ndim)),
                min_numel=None if d.get("min_numel") is None else int(d["min_numel"]),
                max_numel=None if d.get("max_numel") is None else int(d["max_numel"]),
                dtype=None if dtype is None else ((dtype,) if isinstance(dtype, str) else tuple(dtype)),
            )
        except (TypeError, ValueError) as e:
            raise UsageError(f"{where}: {e}") from None


def is_control_name(name: str) -> bool:
    """The baseline's test: the name CONTAINS one of the control patterns (substring, not glob)."""
    return any(p in name for p in CONTROL_TENSOR_NAME_PATTERNS)


def _name_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def _dtype_matches(d: str, t: Tensor) -> bool:
    if d == "float":
        return t.is_floating_point()
    if d == "nonfloat":
        return not t.is_floating_point()
    return str(t.dtype).removeprefix("torch.") == d


def _parse_spec(text: Any, where: str) -> TensorSpec:
    try:
        return TensorSpec.parse(str(text))
    except ValueError as e:
        raise UsageError(f"{where}: {e}") from None


@dataclass(frozen=True)
class Policy:
    """Ordered rules; first match wins; `default` catches the rest."""

    name: str  # preset name or file stem, for reports
    rules: tuple[Rule, ...] = ()  # tried in order
    default: TensorSpec = field(default_factory=lambda: TensorSpec("passthrough", dtype="fp16"))  # catch-all
    calibration: Any = None  # packer.hessian.GptqCalibration: the tokens `+gptq` specs were fitted on

    @property
    def uses_gptq(self) -> bool:
        """True when packing needs calibration Hessians: a `+gptq` or `hmse` spec anywhere."""
        return self.default.needs_hessian or any(r.spec.needs_hessian for r in self.rules)

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> Policy:
        if name not in PRESETS:
            raise UsageError(f"unknown policy {name!r}: use one of {', '.join(PRESETS)} or a .toml/.json policy file")
        return PRESETS[name]

    @classmethod
    def from_dict(cls, d: dict[str, Any], name: str | None = None) -> Policy:
        if not isinstance(d, dict):
            raise UsageError(f"policy must be a table/object, got {type(d).__name__}")
        unknown = sorted(set(d) - POLICY_KEYS)
        if unknown:
            raise UsageError(f"policy: unknown key(s) {', '.join(unknown)} (allowed: name, base, rules, default, calibration)")
        calibration = None
        if d.get("calibration") is not None:
            from golfpack.packer.hessian import GptqCalibration

            calibration = GptqCalibration.from_dict(d["calibration"])
        rules_in = d.get("rules", [])
        if not isinstance(rules_in, list):
            raise UsageError("policy: 'rules' must be a list")
        rules = tuple(Rule.from_dict(r, f"policy rule {i + 1}") for i, r in enumerate(rules_in))
        base = d.get("base")
        if base is not None:
            # `base = "int6+tok8"`: this file's rules go first, then the preset's rules and default.
            parent = cls.preset(str(base))
            rules = rules + parent.rules
            default = parent.default if "default" not in d else _parse_spec(d["default"], "policy default")
        else:
            default = _parse_spec(d.get("default", "fp16"), "policy default")
        return cls(name=str(d.get("name", name or "custom")), rules=rules, default=default, calibration=calibration)

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        from golfpack._io import load_table

        return cls.from_dict(load_table(path, "policy file"), name=Path(path).stem)

    def with_overrides(self, overrides: list[str] | tuple[str, ...]) -> Policy:
        """Prepend `PATTERN=SPEC` rules (glob or re:regex); later overrides win over earlier ones."""
        new: list[Rule] = []
        for text in overrides:
            pattern, sep, spec = text.partition("=")
            if not sep or not pattern.strip() or not spec.strip():
                raise UsageError(f"bad override {text!r}: expected PATTERN=SPEC, e.g. 'blocks.*.mlp.fc.weight=int5'", param="overrides")
            new.append(Rule(spec=_parse_spec(spec, f"override {text!r}"), match=(pattern.strip(),)))
        if not new:
            return self
        return Policy(name=self.name + "".join(f" --set {o}" for o in overrides), rules=tuple(reversed(new)) + self.rules,
                      default=self.default, calibration=self.calibration)

    # -- use ----------------------------------------------------------------------------------
    @staticmethod
    def check_overrides_match(overrides: list[str] | tuple[str, ...], names: list[str]) -> None:
        """An override `PATTERN=SPEC` whose pattern matches no tensor is almost always a typo: refuse it."""
        for text in overrides:
            pattern = text.partition("=")[0].strip()
            if not any(_name_matches(pattern, n) for n in names):
                sample = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                raise UsageError(f"override {text!r}: pattern {pattern!r} matches no tensor (names look like {sample})", param="overrides")

    def spec_for(self, name: str, t: Tensor) -> TensorSpec:
        if not t.is_floating_point():
            return EXACT
        for rule in self.rules:
            if rule.matches(name, t):
                return rule.spec
        return self.default

    def resolve(self, state_dict: dict[str, Tensor]) -> dict[str, TensorSpec]:
        """Spec for every tensor, in state-dict order."""
        return {name: self.spec_for(name, t) for name, t in state_dict.items()}

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "rules": [r.to_dict() for r in self.rules], "default": self.default.label()}
        if self.calibration is not None:
            d["calibration"] = self.calibration.to_dict()
        return d


EXACT = TensorSpec("passthrough", dtype="exact")


def _rule(spec: str, **kw: Any) -> Rule:
    if "match" in kw and isinstance(kw["match"], str):
        kw["match"] = (kw["match"],)
    return Rule(spec=TensorSpec.parse(spec), **kw)


def _baseline_int8() -> Policy:
    # quantize_state_dict_int8, rule for rule: non-float exact (forced by spec_for); float tensors with
    # <= 65,536 elements kept - control names in fp32, fp32/bf16 in fp16, anything else (fp16, fp64) as is;
    # all larger float tensors int8 with the quantile clip (per-row if 2-D, per-tensor otherwise).
    small = BASELINE_KEEP_FLOAT_MAX_NUMEL
    return Policy(
        name="int8",
        rules=(
            _rule("fp32", control=True, max_numel=small),
            _rule("fp16", dtype=("float32", "bfloat16"), max_numel=small),
            _rule("exact", max_numel=small),
        ),
        default=TensorSpec.parse("int8"),
    )


def _layered(name: str, embed: str, mlp: str, attn: str, other: str) -> Policy:
    # Shared shape of the int6-family presets: control tensors, 1-D/scalar and tiny tensors passthrough
    # fp16 (as the seed int6 packs do - the baseline's fp32 for control tensors buys nothing measurable and
    # costs 2 bytes/param; `--set '*_scale*=fp32'` restores it), embeddings `embed`, MLP / attention matrices their own width, other matrices `other`.
    # Matrices are quantized at ANY size (the baseline's 65,536-element cut-off would leave every
    # matrix of a small model in fp16).
    return Policy(
        name=name,
        rules=(
            _rule("fp16", control=True),
            _rule("fp16", ndim=(0, 1)),
            _rule("fp16", max_numel=TINY_MATRIX_MAX_NUMEL),
            _rule(embed, match=("tok_emb.weight", "lm_head.weight", "*.tok_emb.weight", "*.lm_head.weight")),
            _rule(mlp, match=("*.mlp.*",), ndim=(2,)),
            _rule(attn, match=("*.attn.*",), ndim=(2,)),
            _rule(other, ndim=(2,)),
        ),
        default=TensorSpec.parse("fp16"),
    )


PRESETS: dict[str, Policy] = {
    "int8": _baseline_int8(),
    "int6": _layered("int6", embed="int6", mlp="int6", attn="int6", other="int6"),
    "int6+tok8": _layered("int6+tok8", embed="int8", mlp="int6", attn="int6", other="int6"),
    "int5mlp+int6attn+tok8": _layered("int5mlp+int6attn+tok8", embed="int8", mlp="int5", attn="int6", other="int6"),
    # Robust variants: no scale floor (the seed's 1/qmax floor swallows the small-range rows of many trained
    # models), measured in bench/results/quant_gap.md. No calibration tokens needed.
    "int6sd+tok8": _layered("int6sd+tok8", embed="int8:mse", mlp="int6:sd12", attn="int6:sd12", other="int6:sd12"),
    "int6g+tok8": _layered("int6g+tok8", embed="int8:mse", mlp="int6:g64", attn="int6:g64", other="int6:g64"),
}


def resolve_policy(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> Policy:
    """A preset name, or a path to a .toml/.json policy file; then `--set` overrides."""
    if name_or_path in PRESETS:
        pol = PRESETS[name_or_path]
    elif name_or_path.lower().endswith((".toml", ".json")) or Path(name_or_path).is_file():
        pol = Policy.load(name_or_path)
    else:
        raise UsageError(
            f"unknown policy {name_or_path!r}: use one of {', '.join(PRESETS)} or a .toml/.json policy file"
        )
    return pol.with_overrides(list(overrides))


__all__ = ["EXACT", "PRESETS", "Policy", "Rule", "is_control_name", "resolve_policy"]
