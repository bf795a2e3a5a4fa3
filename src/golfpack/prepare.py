"""Text -> challenge token shards, as the challenge's export does it: each document becomes
[BOS] + sentencepiece ids (no EOS), documents are concatenated in input order, and the stream is
cut into shards of exactly `shard_tokens` tokens (the last one shorter; a document may span two
shards, as in the official fineweb shards).

Inputs: `.jsonl`/`.ndjson` files hold one JSON object per line with the text in a field
(default `text`); any other file is plain text. Plain text is split into documents at blank
lines (one document per blank-line-separated paragraph, its lines joined with newlines); with
`per_line=True` every non-empty line is a document instead.

A shard set is replaced as one unit, with no recovery step. The new set is built in a hidden folder
beside `out_dir` (same parent, so the same filesystem: `.{name}.golfpack-new-XXXXXXXX`), every other
entry of `out_dir` (not an old `{prefix}_NNNNNN.bin`, not our own temp) is hard-linked into it, and
the two folders are exchanged in one `renameat2(RENAME_EXCHANGE)` (Linux; `renamex_np(RENAME_SWAP)`
on macOS); the old folder, now at the temp name, is then removed. After a kill at any moment
`out_dir` holds exactly the old set or exactly the new one; the temp folder it may leave beside it
is removed by the next run. A symlinked `out_dir` keeps its link: its target is exchanged. The new
folder gets `out_dir`'s mode bits and (where allowed) owner, not its ACLs or extended attributes. One prepare at a time
per folder: the run holds an flock on `out_dir` (and on the new folder it exchanges in), and a second
run into the same folder is refused.

Fallback (no exchange: another OS, a filesystem that answers EINVAL/ENOSYS, `out_dir` on its own
mount, a parent we cannot write, or an `out_dir` holding subfolders, which cannot be hard-linked):
the journal path. Shards go to `.{prefix}.partial-*` inside `out_dir`, a journal `.{prefix}.swap.json`
is written atomically (the commit point), then the shards are moved and the journal removed. A run
killed after the journal leaves a mixed folder until the next `prepare` (or `recover_shard_set`)
rolls it forward; shard readers refuse a folder with a journal in it (formats/shards.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import stat
import sys
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


NEW_TAG = ".golfpack-new-"  # `.{out_dir name}{NEW_TAG}XXXXXXXX`: the new folder built beside out_dir
_AT_FDCWD, _RENAME_EXCHANGE, _RENAME_SWAP = -100, 2, 2


def _exchange_dirs(a: Path, b: Path) -> None:
    """Swap two folders of one filesystem in one atomic step. OSError (ENOSYS, EINVAL, ...) where the OS or the
    filesystem cannot: the caller then falls back to the journal."""
    libc = ctypes.CDLL(None, use_errno=True)
    if sys.platform.startswith("linux") and hasattr(libc, "renameat2"):
        fn = libc.renameat2
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    elif sys.platform == "darwin" and hasattr(libc, "renamex_np"):
        fn = libc.renamex_np
        fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
        rc = fn(os.fsencode(a), os.fsencode(b), _RENAME_SWAP)
    else:
        raise OSError(errno.ENOSYS, f"no atomic folder exchange on {sys.platform}")
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a), None, str(b))


def _lock(folder: Path) -> int | None:
    """Take an exclusive flock on `folder` (the folder now at that path); DataError if another run holds it.
    None where flock is not available (Windows, some network filesystems): concurrent runs are then the user's problem."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    for _ in range(10):
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataError(f"{folder}: another `golfpack prepare` is writing into this folder; wait for it to finish") from None
        except OSError:
            os.close(fd)
            return None
        st, now = os.fstat(fd), os.stat(folder)
        if (st.st_dev, st.st_ino) == (now.st_dev, now.st_ino):
            return fd
        os.close(fd)  # a run that just finished exchanged the folder under us: lock the one now at the path
    raise DataError(f"{folder}: the folder keeps being replaced while we try to lock it; is another prepare looping?")


def _unlock(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the descriptor drops its flock


def _stale_new_dirs(real: Path) -> list[Path]:
    """Our folders beside `real` left by a killed run: a new set never exchanged in, or an old one not yet removed."""
    pat = re.compile(re.escape("." + real.name + NEW_TAG) + r"[a-z0-9_]{8}")
    try:
        return [Path(e.path) for e in os.scandir(real.parent) if pat.fullmatch(e.name) and e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _recover(real: Path, prefix: str) -> bool:
    done = _finish_swap(real, prefix)
    for stale in real.glob(f".{prefix}.partial-*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    for stale in _stale_new_dirs(real):
        shutil.rmtree(stale, ignore_errors=True)
    return done


def recover_shard_set(out_dir: str | os.PathLike[str], prefix: str = "tokens") -> bool:
    """Clean up what a killed `prepare` left for `out_dir` and `prefix`: a committed journal swap (fallback path) is
    rolled forward (True), stale `.{prefix}.partial-*` folders inside and `.{name}.golfpack-new-*` folders beside
    `out_dir` are removed. prepare does this first; a folder replaced by exchange never needs it to be correct."""
    out = Path(out_dir)
    if not out.is_dir():
        return False
    real = Path(os.path.realpath(out))
    fd = _lock(real)
    try:
        return _recover(real, prefix)
    finally:
        _unlock(fd)


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


def _is_ours(name: str, prefix: str) -> bool:
    """An entry of out_dir the new folder must not inherit: an old shard of `prefix`, or our own temp/journal."""
    return (re.fullmatch(re.escape(prefix) + r"_\d{6}\.bin", name) is not None or name.startswith(f".{prefix}.partial-")
            or name == _journal(Path(), prefix).name)


def _has_subfolder(real: Path, prefix: str) -> bool:
    return any(e.is_dir(follow_symlinks=False) and not _is_ours(e.name, prefix) for e in os.scandir(real))


def _new_dir_beside(real: Path, prefix: str) -> Path | None:
    """The folder the new set is built in, beside `real`; None where the exchange cannot work (journal path)."""
    if not (sys.platform.startswith("linux") or sys.platform == "darwin"):
        return None  # no folder exchange (nor hard links of symlinks) to build on
    try:
        if os.stat(real.parent).st_dev != os.stat(real).st_dev or _has_subfolder(real, prefix):
            return None  # out_dir is a mount point (rename would be EXDEV), or holds folders we cannot hard-link
        return Path(tempfile.mkdtemp(prefix=f".{real.name}{NEW_TAG}", dir=real.parent))
    except OSError:
        return None  # e.g. the parent is not writable


def _swap_in(real: Path, new: Path, prefix: str) -> bool:
    """Give `new` (holding the new shards) every other entry of `real` as a hard link, then exchange the two folders.
    False (nothing exchanged) where that cannot be done: the caller takes the journal path."""
    lock = None
    try:
        for e in os.scandir(real):
            if _is_ours(e.name, prefix):
                continue
            if e.is_dir(follow_symlinks=False):
                return False  # a folder appeared during the run
            os.link(e.path, new / e.name, follow_symlinks=False)
        st = os.stat(real)
        os.chmod(new, stat.S_IMODE(st.st_mode))
        if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):  # e.g. root preparing into a user's folder
            with contextlib.suppress(OSError):
                os.chown(new, st.st_uid, st.st_gid)
        _fsync_dir(new)
        lock = _lock(new)  # so the folder at out_dir stays locked after the exchange, until we are done
        _exchange_dirs(new, real)
    except (OSError, DataError):
        _unlock(lock)
        return False
    try:
        _fsync_dir(real.parent)
        # `new` now names the old folder: bring over entries that appeared after the links were made, then drop it
        for e in os.scandir(new):
            if not _is_ours(e.name, prefix) and not os.path.lexists(real / e.name):
                with contextlib.suppress(OSError):
                    os.rename(e.path, real / e.name)
        shutil.rmtree(new, ignore_errors=True)
    finally:
        _unlock(lock)
    return True


def _encode_into(out: Path, paths: list[Path], sp, bos: int, *, shard_tokens: int, prefix: str, fmt: str,
                 per_line: bool, text_field: str, overwrite: bool, progress: bool | None) -> PrepareReport:
    real = Path(os.path.realpath(out))  # a symlinked out_dir: exchange its target, keep the link
    fd = _lock(real)
    try:
        return _encode_locked(out, real, paths, sp, bos, shard_tokens=shard_tokens, prefix=prefix, fmt=fmt,
                              per_line=per_line, text_field=text_field, overwrite=overwrite, progress=progress)
    finally:
        _unlock(fd)


def _encode_locked(out: Path, real: Path, paths: list[Path], sp, bos: int, *, shard_tokens: int, prefix: str, fmt: str,
                   per_line: bool, text_field: str, overwrite: bool, progress: bool | None) -> PrepareReport:
    _recover(real, prefix)
    old = sorted(real.glob(f"{prefix}_[0-9][0-9][0-9][0-9][0-9][0-9].bin"))
    if old and not overwrite:
        raise UsageError(f"{out} already has {len(old)} '{prefix}_*.bin' shard(s); pass overwrite=True or another prefix/out_dir", param="overwrite")

    t0 = time.perf_counter()
    report = PrepareReport(documents=0, tokens=0)
    tmp = _new_dir_beside(real, prefix) or Path(tempfile.mkdtemp(prefix=f".{prefix}.partial-", dir=real))
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
        names = [_shard_name(prefix, i) for i in range(len(written))]
        if tmp.parent == real.parent and not _swap_in(real, tmp, prefix):
            # no exchange after all: move the new set inside out_dir (same filesystem) and take the journal path
            inside = Path(tempfile.mkdtemp(prefix=f".{prefix}.partial-", dir=real))
            os.replace(tmp, inside)
            tmp = inside
        if tmp.parent == real:
            # Journal path: commit (the journal), then move the set in and drop stale shards of an earlier run.
            drop = [p.name for p in old if p.name not in set(names)]
            write_bytes_atomic(_journal(real, prefix), json.dumps({"from": tmp.name, "names": names, "drop": drop}).encode())
            _finish_swap(real, prefix)
        report.shards = [{"path": str(out / name), "tokens": n} for name, (_src, n) in zip(names, written)]
    finally:
        bar.close()
        if not _journal(real, prefix).exists():  # committed but interrupted: the next run rolls it forward from tmp
            with contextlib.suppress(OSError):
                shutil.rmtree(tmp)
    report.input_bytes = total
    report.seconds = time.perf_counter() - t0
    return report


__all__ = ["DEFAULT_SHARD_TOKENS", "NEW_TAG", "PrepareReport", "iter_documents", "prepare", "recover_shard_set"]
