"""Text -> challenge token shards, as the challenge's export does it: each document becomes
[BOS] + sentencepiece ids (no EOS), documents are concatenated in input order, and the stream is
cut into shards of exactly `shard_tokens` tokens (the last one shorter; a document may span two
shards, as in the official fineweb shards).

Inputs: `.jsonl`/`.ndjson` files hold one JSON object per line with the text in a field
(default `text`); any other file is plain text. Plain text is split into documents at blank
lines (one document per blank-line-separated paragraph, its lines joined with newlines); with
`per_line=True` every non-empty line is a document instead.

Nothing is half-written: shards go to a hidden temp folder in the output folder
(`.{prefix}.partial-*`). Once every input is encoded, a journal `.{prefix}.swap.json` is written
atomically, naming that folder, the new shard names and the old ones to drop; then the shards are
moved into place and the journal removed. The journal is the commit point: a run killed before it
leaves the old set untouched (its temp folder is removed by the next run), a run killed after it is
rolled forward by the next `prepare` (or `recover_shard_set`), so the folder ends with exactly the
old set or exactly the new one. Shard readers refuse a folder with a journal in it (formats/shards.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from golfpack._io import _fsync_dir, write_bytes_atomic
from golfpack._progress import bar as progress_bar
from golfpack.errors import DataError, UsageError
from golfpack.formats.shards import MAX_TOKEN_ID, write_shard

DEFAULT_SHARD_TOKENS = 100_000_000  # the official fineweb shard size
ENCODE_BATCH = 512  # documents per sentencepiece call (it encodes a batch with several threads)


@dataclass
class PrepareReport:
    """What `prepare` wrote."""

    documents: int  # documents encoded
    tokens: int  # tokens written, BOS included
    shards: list[dict] = field(default_factory=list)  # [{"path": str, "tokens": int}] in order
    input_bytes: int = 0  # bytes of input text read
    seconds: float = 0.0  # wall time

    def to_dict(self) -> dict:
        return asdict(self)


def input_format(path: Path, fmt: str = "auto") -> str:
    if fmt != "auto":
        return fmt
    return "jsonl" if path.suffix.lower() in (".jsonl", ".ndjson") else "txt"


def iter_documents(path: str | os.PathLike[str], *, fmt: str = "auto", per_line: bool = False,
                   text_field: str = "text", on_bytes=None) -> Iterator[str]:
    """Yield the documents of one input file in order; `on_bytes(n)` is told how many bytes were read."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"input {p}: file not found", param="inputs")
    kind = input_format(p, fmt)
    with open(p, "rb") as f:
        if kind == "jsonl":
            for lineno, raw in enumerate(f, 1):
                if on_bytes:
                    on_bytes(len(raw))
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise DataError(f"input {p} line {lineno}: not valid JSON ({e})") from None
                if not isinstance(obj, dict) or not isinstance(obj.get(text_field), str):
                    raise DataError(f"input {p} line {lineno}: expected a JSON object with a string {text_field!r} field")
                yield obj[text_field]
            return
        para: list[str] = []
        for lineno, raw in enumerate(f, 1):
            if on_bytes:
                on_bytes(len(raw))
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise DataError(f"input {p} line {lineno}: not UTF-8 text") from None
            if per_line:
                if line.strip():
                    yield line
            elif line.strip():
                para.append(line)
            elif para:
                yield "\n".join(para)
                para = []
        if para:
            yield "\n".join(para)


def _shard_name(prefix: str, index: int) -> str:
    return f"{prefix}_{index:06d}.bin"


def _journal(out: Path, prefix: str) -> Path:
    return out / f".{prefix}.swap.json"


def _finish_swap(out: Path, prefix: str) -> bool:
    """Roll a committed swap forward (idempotent: every step can be redone after a kill). False: no journal."""
    j = _journal(out, prefix)
    if not j.is_file():
        return False
    try:
        d = json.loads(j.read_text(encoding="utf-8"))
        src, names, drop = out / d["from"], list(d["names"]), list(d["drop"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"{j}: unreadable shard-swap journal ({e}); remove it and rerun prepare") from None
    shard = re.compile(re.escape(prefix) + r"_\d{6}\.bin")
    if not (d["from"].startswith(f".{prefix}.partial-") and "/" not in d["from"]
            and all(isinstance(n, str) and shard.fullmatch(n) for n in names + drop)):
        raise DataError(f"{j}: shard-swap journal names files that are not {prefix!r} shards; remove it and rerun prepare")
    for name in names:
        if (src / name).exists():
            os.replace(src / name, out / name)
        elif not (out / name).is_file():
            raise DataError(f"{j}: shard {name} is neither in {src} nor in place; the set cannot be completed")
    for name in drop:
        with contextlib.suppress(FileNotFoundError):
            (out / name).unlink()
    _fsync_dir(out)
    j.unlink()
    _fsync_dir(out)
    with contextlib.suppress(OSError):
        shutil.rmtree(src)
    return True


def recover_shard_set(out_dir: str | os.PathLike[str], prefix: str = "tokens") -> bool:
    """Finish or undo what a killed `prepare` left in `out_dir` for `prefix`: a committed swap is rolled
    forward (True), then stale `.{prefix}.partial-*` temp folders are removed. prepare calls it first."""
    out = Path(out_dir)
    if not out.is_dir():
        return False
    done = _finish_swap(out, prefix)
    for stale in out.glob(f".{prefix}.partial-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    return done


def prepare(
    inputs: list[str | os.PathLike[str]],
    tokenizer: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    shard_tokens: int = DEFAULT_SHARD_TOKENS,
    prefix: str = "tokens",
    fmt: str = "auto",
    per_line: bool = False,
    text_field: str = "text",
    overwrite: bool = False,
    progress: bool | None = False,
) -> PrepareReport:
    """Encode `inputs` with the sentencepiece model and write `{prefix}_{i:06d}.bin` shards to `out_dir`."""
    from golfpack.tokenizer import load_sentencepiece

    if shard_tokens <= 0:
        raise UsageError(f"shard_tokens must be positive, got {shard_tokens}", param="shard_tokens")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", prefix):
        raise UsageError(f"prefix {prefix!r} must be a plain file-name stem (letters, digits, . _ -)", param="prefix")
    if not inputs:
        raise UsageError("no input files given", param="inputs")
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise UsageError(f"input {p}: file not found", param="inputs")
    sp = load_sentencepiece(tokenizer)
    if sp.vocab_size() - 1 > MAX_TOKEN_ID:
        raise DataError(f"tokenizer has {sp.vocab_size()} pieces; shards store uint16 ids (at most {MAX_TOKEN_ID + 1})")
    bos = int(sp.bos_id())
    if bos < 0:
        raise DataError(f"tokenizer {tokenizer} has no BOS piece; the challenge shards start every document with BOS")

    out = Path(out_dir)
    made = _missing_dirs(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        return _encode_into(out, paths, sp, bos, shard_tokens=shard_tokens, prefix=prefix, fmt=fmt, per_line=per_line,
                            text_field=text_field, overwrite=overwrite, progress=progress)
    except BaseException:
        # A failed run leaves no trace: drop the folders this call created, deepest first, while still empty
        # (rmdir refuses a non-empty one, so nothing the user put there can go).
        for d in made:
            try:
                d.rmdir()
            except OSError:
                break
        raise


def _missing_dirs(out: Path) -> list[Path]:
    """`out` and its ancestors that do not exist yet (what mkdir(parents=True) will create), deepest first."""
    missing: list[Path] = []
    p = out
    while not p.exists() and not p.is_symlink() and p.parent != p:
        missing.append(p)
        p = p.parent
    return missing


def _encode_into(out: Path, paths: list[Path], sp, bos: int, *, shard_tokens: int, prefix: str, fmt: str,
                 per_line: bool, text_field: str, overwrite: bool, progress: bool | None) -> PrepareReport:
    recover_shard_set(out, prefix)
    old = sorted(out.glob(f"{prefix}_[0-9][0-9][0-9][0-9][0-9][0-9].bin"))
    if old and not overwrite:
        raise UsageError(f"{out} already has {len(old)} '{prefix}_*.bin' shard(s); pass overwrite=True or another prefix/out_dir", param="overwrite")

    t0 = time.perf_counter()
    report = PrepareReport(documents=0, tokens=0)
    tmp = Path(tempfile.mkdtemp(prefix=f".{prefix}.partial-", dir=out))
    written: list[tuple[Path, int]] = []
    buf: list[np.ndarray] = []
    buffered = 0

    def flush(final: bool) -> None:
        nonlocal buf, buffered
        if not buffered:
            return
        stream = np.concatenate(buf)
        n_full = len(stream) // shard_tokens
        cut = len(stream) if final else n_full * shard_tokens
        for lo in range(0, cut, shard_tokens):
            chunk = stream[lo : min(lo + shard_tokens, cut)]
            dest = tmp / _shard_name(prefix, len(written))
            write_shard(dest, chunk)
            written.append((dest, int(chunk.size)))
        rest = stream[cut:]
        buf, buffered = ([rest] if rest.size else []), int(rest.size)

    total = sum(p.stat().st_size for p in paths)
    bar = progress_bar(total=total, desc="prepare", unit="B", unit_scale=True, enabled=progress)
    try:
        batch: list[str] = []

        def encode(batch: list[str]) -> None:
            nonlocal buffered
            for ids in sp.encode(batch, out_type=int):
                arr = np.empty(len(ids) + 1, dtype=np.uint16)
                arr[0] = bos
                arr[1:] = ids
                buf.append(arr)
                buffered += arr.size
                report.tokens += arr.size
            report.documents += len(batch)
            bar.set_postfix(docs=report.documents, tokens=report.tokens, refresh=False)
            if buffered >= shard_tokens:
                flush(final=False)

        for p in paths:
            for doc in iter_documents(p, fmt=fmt, per_line=per_line, text_field=text_field, on_bytes=bar.update):
                batch.append(doc)
                if len(batch) >= ENCODE_BATCH:
                    encode(batch)
                    batch = []
        if batch:
            encode(batch)
        flush(final=True)
        if not written:
            raise DataError("the inputs contain no documents; nothing to write")
        # Everything encoded: commit (the journal), then swap the set in and drop stale shards of an earlier run.
        names = [_shard_name(prefix, i) for i in range(len(written))]
        drop = [p.name for p in old if p.name not in set(names)]
        write_bytes_atomic(_journal(out, prefix), json.dumps({"from": tmp.name, "names": names, "drop": drop}).encode())
        _finish_swap(out, prefix)
        report.shards = [{"path": str(out / name), "tokens": n} for name, (_src, n) in zip(names, written)]
    finally:
        bar.close()
        if not _journal(out, prefix).exists():  # committed but interrupted: the next run rolls it forward from tmp
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    report.input_bytes = total
    report.seconds = time.perf_counter() - t0
    return report


__all__ = ["DEFAULT_SHARD_TOKENS", "PrepareReport", "iter_documents", "prepare", "recover_shard_set"]
