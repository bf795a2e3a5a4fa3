"""Text for the pathological model (bench/train_pathological.py) beyond the pydoc topic pages, so that its
quantization gaps can be told apart from the eval's sampling noise.

The demo's corpus is the pydoc topic pages; every 10th as val is 11,580 tokens, too few to tell a 0.5x ratio from
0.6x (stop 14: 0.53x [0.38, 0.72]). More text of the same kind: the docstrings of the standard library (each public
module's, then its public classes' and routines' in name order), one document per module (`stdlib_docstrings`).
`builtins` is left out, since some of its docstrings restate the topic pages. Which modules import (and their
docstrings) depends on the Python build, so the corpus records the Python version beside its sizes.

Two uses:
- `corpus("topics+docstrings")`: the topic pages and the docstrings together, the pathological model's corpus
  since stop 15 (split by document, every 4th as val: in-distribution held-out text ~8x the old val shard);
- `python bench/patho_corpus.py --out DIR`: the docstrings alone, encoded with DIR's demo tokenizer, as an
  out-of-distribution held-out shard for a model trained on the topic pages only (quant_gap model `patho_docs`).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import warnings
from pathlib import Path

from golfpack.demo_data import demo_documents, encode_documents
from golfpack.formats.shards import write_shard
from golfpack.tokenizer import load_sentencepiece

# modules whose import opens windows, prints, or starts things; builtins restates the topic pages
SKIP = frozenset({"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "pydoc_data", "builtins"})


def stdlib_docstrings() -> tuple[list[str], list[str]]:
    """(documents, module names): per importable public stdlib module, its docstring and those of its public
    classes and functions defined in it, in name order."""
    docs, names = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in sorted(sys.stdlib_module_names):
            if name.startswith("_") or name in SKIP:
                continue
            try:
                mod = importlib.import_module(name)
            except Exception:  # not built on this platform (e.g. msvcrt, winreg)
                continue
            parts = [d] if (d := inspect.getdoc(mod)) else []
            for k in sorted(vars(mod)):
                obj = getattr(mod, k)
                if k.startswith("_") or getattr(obj, "__module__", None) != name:
                    continue
                if (inspect.isclass(obj) or inspect.isroutine(obj)) and (d := inspect.getdoc(obj)):
                    parts.append(f"{k}: {d}")
            if parts:
                docs.append("\n\n".join(parts))
                names.append(name)
    return docs, names


CORPORA = ("topics", "topics+docstrings")


def corpus(name: str) -> list[str]:
    """The documents of corpus `name` (CORPORA): the pydoc topic pages, then (topics+docstrings) the docstrings."""
    if name not in CORPORA:
        raise SystemExit(f"unknown corpus {name!r}: one of {', '.join(CORPORA)}")
    return demo_documents() + (stdlib_docstrings()[0] if name == "topics+docstrings" else [])


def write_heldout(data_dir: Path) -> dict:
    """Encode stdlib_docstrings() with data_dir's demo tokenizer into data_dir/heldout_docs_000000.bin."""
    tok = data_dir / "demo_bpe1024.model"
    if not tok.is_file():
        raise SystemExit(f"{tok} not found: run bench/train_pathological.py --out {data_dir.parent} first")
    sp = load_sentencepiece(tok)
    docs, names = stdlib_docstrings()
    ids = encode_documents(sp, docs)
    write_shard(data_dir / "heldout_docs_000000.bin", ids)
    info = {"tokens": len(ids), "documents": len(docs), "chars": sum(map(len, docs)),
            "python": sys.version.split()[0], "modules": names}
    (data_dir / "heldout_docs.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/gp_patho3", help="bench/train_pathological.py's --out")
    info = write_heldout(Path(ap.parse_args().out) / "data")
    print(f"{info['tokens']:,} tokens from {info['documents']} modules' docstrings (Python {info['python']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
