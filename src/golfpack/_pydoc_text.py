"""Python's own documentation as text: English prose that ships with every Python, so needs no download.

`pydoc_data.topics` holds the language reference's topic pages (~0.5 MB). The demo trains its tokenizer
and model on them; `--calib pydoc` calibrates GPTQ on them. Both read them here, in the same order.
"""

from __future__ import annotations


def pydoc_documents() -> list[str]:
    """The topic pages, one document each (stripped, empty pages dropped), in sorted-key order."""
    from pydoc_data.topics import topics

    return [topics[k].strip() for k in sorted(topics) if topics[k].strip()]


__all__ = ["pydoc_documents"]
