"""Layers only point down: every golfpack import (top-level or inside a function) is checked."""

from __future__ import annotations

import ast
from pathlib import Path

import golfpack

SRC = Path(golfpack.__file__).resolve().parent

# Lower number = lower layer. A module may import its own package and anything in a lower layer;
# packages that share a layer number (packer/evaluator, search/trainer, ...) may not import each other.
LAYERS: dict[str, int] = {
    "golfpack.errors": 0,
    "golfpack._version": 0,
    "golfpack._io": 1,
    "golfpack._progress": 1,
    "golfpack._pydoc_text": 1,  # Python's docs as text (demo data, pydoc calibration)
    "golfpack.formats": 2,  # all on-disk vocabulary: spec labels, codecs, bit-packing, QGv3, legacy, shards
    "golfpack.model": 3,
    "golfpack.tokenizer": 3,
    "golfpack.adapters": 4,  # model adapters: the baseline family or the user's own model file (builds on model)
    "golfpack.loading": 4,  # any file -> state dict + model config
    "golfpack.prepare": 4,  # text -> token shards
    "golfpack.packer": 5,
    "golfpack.evaluator": 5,
    "golfpack.budget": 6,
    "golfpack.trainer": 6,
    "golfpack.api": 7,
    "golfpack.demo_data": 7,
    "golfpack.cli": 8,
    "golfpack": 9,  # the package root re-exports the public API: nothing inside may import it
}


def unit_of(module: str) -> str:
    """The LAYERS key that owns `module` (longest matching prefix)."""
    best = ""
    for key in LAYERS:
        if (module == key or module.startswith(key + ".")) and len(key) > len(best):
            best = key
    assert best, f"{module} is in no layer: add it to LAYERS"
    return best


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def golfpack_imports(path: Path, me: str | None = None) -> list[tuple[int, str]]:
    """(line, module) of every golfpack import in `path` (module `me`, for relative imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = me if me is not None else module_name(path)
    pkg = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "golfpack"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "golfpack":
                continue
            if mod == "golfpack":  # `from golfpack import x`: x may be a submodule
                out += [(node.lineno, f"golfpack.{a.name}" if f"golfpack.{a.name}" in _all_modules() else "golfpack")
                        for a in node.names]
            else:
                out.append((node.lineno, mod))
    return out


def _all_modules() -> set[str]:
    return {module_name(p) for p in SRC.rglob("*.py")}


def violations() -> list[str]:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        me = module_name(path)
        if path.name == "__main__.py":  # `python -m golfpack.<stage>` entry points are CLI-level
            continue
        mine = unit_of(me)
        for line, target in golfpack_imports(path):
            theirs = unit_of(target)
            if theirs == mine:
                continue
            lm, lt = LAYERS[mine], LAYERS[theirs]
            if lt > lm or (lt == lm and theirs != mine):
                bad.append(f"{path.relative_to(SRC)}:{line}: {me} ({mine}, layer {lm}) imports {target} "
                           f"({theirs}, layer {lt})")
    return bad


def test_no_upward_or_sideways_imports() -> None:
    bad = violations()
    assert not bad, "imports that point up or sideways:\n" + "\n".join(bad)


def test_the_checker_catches_an_upward_import(tmp_path: Path) -> None:
    # the rule itself: formats importing the packer, or the packer importing the evaluator, is refused
    assert LAYERS[unit_of("golfpack.formats.qgv3")] < LAYERS[unit_of("golfpack.packer.pack")]
    fake = tmp_path / "x.py"
    fake.write_text("import os\n\ndef f():\n    from golfpack.packer import pack\n    from ..model import GPT\n")
    found = golfpack_imports(fake, me="golfpack.formats.x")
    assert found == [(4, "golfpack.packer"), (5, "golfpack.model")]
    assert all(LAYERS[unit_of(t)] > LAYERS["golfpack.formats"] for _, t in found)


def test_every_module_has_a_layer() -> None:
    for mod in _all_modules():
        unit_of(mod)
