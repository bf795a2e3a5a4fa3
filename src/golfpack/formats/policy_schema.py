"""The shape of a stored storage policy (`Policy.to_dict()`, the QGv3 header's `policy`), checked by type and range.

One definition of the policy's keys for both sides: packer/policy.py (layer 5) builds Policy objects from
them and qgv3_read.py (this layer) refuses a header whose policy does not fit them. Only the shape is
checked here (known keys, JSON types, ranges, every spec label parsed by formats/spec.py, regexes that
compile); what a policy means (preset names in `base`, matching tensors) is the packer's business.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from golfpack.errors import GolfpackError
from golfpack.formats.spec import TensorSpec

POLICY_KEYS = frozenset({"name", "base", "rules", "default", "calibration"})  # a policy object's keys
RULE_KEYS = frozenset({"match", "control", "ndim", "min_numel", "max_numel", "dtype", "spec"})  # a rule's keys
CALIBRATION_KEYS = frozenset({"source", "batch", "seq", "digest"})  # a policy's GPTQ calibration's keys
MAX_RULES = 10_000  # a real policy has tens; bounds the work a hostile header can ask for
MAX_RULE_NDIM = 8  # = the reader's max_ndim: a rule for more dims could never match
MAX_COUNT = 1 << 62  # element counts, batch and seq sizes


def check_policy(d: Any, fail: Callable[[str], GolfpackError], where: str = "policy") -> None:
    """Raise `fail(message)` unless `d` is a policy object as `Policy.to_dict()` writes it (every key optional).
    Accepts the forms Policy.from_dict accepts where they are unambiguous (a single string for `match`/`dtype`,
    one int for `ndim`), but no silent conversions: a count is an int, not "3" or 3.0."""
    if not isinstance(d, dict):
        raise fail(f"{where} must be an object, got {type(d).__name__}")
    _keys(d, POLICY_KEYS, where, fail)
    for k in ("name", "base"):
        if d.get(k) is not None and not isinstance(d[k], str):
            raise fail(f"{where} {k} must be a string, got {type(d[k]).__name__}")
    if "default" in d:
        _spec(d["default"], f"{where} default", fail)
    rules = d.get("rules", [])
    if not isinstance(rules, list) or len(rules) > MAX_RULES:
        raise fail(f"{where} rules must be a list of at most {MAX_RULES} rules")
    for i, r in enumerate(rules):
        _rule(r, f"{where} rule {i + 1}", fail)
    if d.get("calibration") is not None:
        _calibration(d["calibration"], f"{where} calibration", fail)


def _keys(d: dict, allowed: frozenset[str], where: str, fail: Callable[[str], GolfpackError]) -> None:
    unknown = sorted(str(k) for k in set(d) - allowed)
    if unknown:
        raise fail(f"{where}: unknown key(s) {', '.join(ascii(k)[:40] for k in unknown[:5])} (allowed: {', '.join(sorted(allowed))})")


def _spec(v: Any, where: str, fail: Callable[[str], GolfpackError]) -> None:
    if not isinstance(v, str):
        raise fail(f"{where} must be a spec label string, got {type(v).__name__}")
    try:
        ok = TensorSpec.parse(v).label() == v
    except (GolfpackError, ValueError):
        ok = False
    if not ok:  # only canonical labels, as the writer writes them (no INT6, ' int6 ', int06)
        raise fail(f"{where}: {ascii(v)[:60]} is not a canonical spec label (int6, int6+gptq, fp16, ...)")


def _count(v: Any, where: str, fail: Callable[[str], GolfpackError], lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= MAX_COUNT:
        raise fail(f"{where} must be an integer in {lo}..2^62, got {ascii(v)[:40]}")


def _strings(v: Any, where: str, fail: Callable[[str], GolfpackError]) -> list[str]:
    items = [v] if isinstance(v, str) else v
    if not isinstance(items, list) or not items or not all(isinstance(x, str) for x in items):
        raise fail(f"{where} must be a string or a non-empty list of strings")
    return items


def _rule(r: Any, where: str, fail: Callable[[str], GolfpackError]) -> None:
    if not isinstance(r, dict):
        raise fail(f"{where} must be an object, got {type(r).__name__}")
    _keys(r, RULE_KEYS, where, fail)
    if "spec" not in r:
        raise fail(f"{where} lacks its spec")
    _spec(r["spec"], f"{where} spec", fail)
    for p in _strings(r.get("match", "*"), f"{where} match", fail):
        if p.startswith("re:"):
            try:
                re.compile(p[3:])
            except (re.error, RecursionError, OverflowError, ValueError) as e:
                raise fail(f"{where} match: bad regex {ascii(p[3:])[:60]} ({str(e)[:80]})") from None
    if r.get("control") is not None and not isinstance(r["control"], bool):
        raise fail(f"{where} control must be true, false or null")
    if r.get("ndim") is not None:
        ndims = [r["ndim"]] if isinstance(r["ndim"], int) and not isinstance(r["ndim"], bool) else r["ndim"]
        if not isinstance(ndims, list) or not ndims:
            raise fail(f"{where} ndim must be an integer or a non-empty list of integers")
        for n in ndims:
            if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_RULE_NDIM:
                raise fail(f"{where} ndim must hold integers in 0..{MAX_RULE_NDIM}, got {ascii(n)[:40]}")
    for k in ("min_numel", "max_numel"):
        if r.get(k) is not None:
            _count(r[k], f"{where} {k}", fail, 0)
    if r.get("dtype") is not None:
        _strings(r["dtype"], f"{where} dtype", fail)


def _calibration(c: Any, where: str, fail: Callable[[str], GolfpackError]) -> None:
    if not isinstance(c, dict):
        raise fail(f"{where} must be an object, got {type(c).__name__}")
    _keys(c, CALIBRATION_KEYS, where, fail)
    if not isinstance(c.get("source"), str):
        raise fail(f"{where} source must be a string")
    for k in ("batch", "seq"):
        if k in c:
            _count(c[k], f"{where} {k}", fail, 1)
    if c.get("digest") is not None and not isinstance(c["digest"], str):
        raise fail(f"{where} digest must be a string or null")


__all__ = ["CALIBRATION_KEYS", "POLICY_KEYS", "RULE_KEYS", "check_policy"]
