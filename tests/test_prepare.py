"""`golfpack prepare`: text -> BOS-prefixed shards; the round trip reproduces the official val tokens."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from golfpack.cli import main
from golfpack.errors import GolfpackError
from golfpack.formats.shards import load_tokens, read_shard
from golfpack.prepare import iter_documents, prepare


def test_roundtrip_equals_official_val_tokens(val_docs_jsonl, val_shard, sp1024_model, tmp_path):
    """Encoding the 901 decoded val docs gives exactly the official tokens up to document 902's BOS."""
    out = tmp_path / "shards"
    res = CliRunner().invoke(main, ["prepare", str(val_docs_jsonl), "--tokenizer", str(sp1024_model), "-o", str(out),
                                    "--prefix", "fineweb_val", "--shard-tokens", "400000", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["documents"] == 901
    assert [s["tokens"] for s in rep["shards"]] == [400_000, 400_000, 240_060]
    assert [p.name for p in sorted(out.iterdir())] == [f"fineweb_val_00000{i}.bin" for i in range(3)]
    ours = load_tokens(out / "fineweb_val_*.bin")
    official = read_shard(val_shard)
    assert ours.size == rep["tokens"] == 1_040_060 == official.size - 238  # 238 = tokens of the cut-off doc 902
    assert np.array_equal(ours, official[: ours.size])
    assert official[ours.size] == 1 and int((ours == 1).sum()) == 901  # one BOS per document, no EOS
    assert not (ours == 2).any()


def test_txt_paragraphs_and_lines(sp1024_model, tmp_path):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp1024_model))
    txt = tmp_path / "a.txt"
    txt.write_text("First paragraph,\nsecond line.\n\n\nSecond paragraph.\n\nThird one.\n")
    docs = list(iter_documents(txt))
    assert docs == ["First paragraph,\nsecond line.", "Second paragraph.", "Third one."]
    assert list(iter_documents(txt, per_line=True)) == ["First paragraph,", "second line.", "Second paragraph.", "Third one."]
    r = prepare([txt], sp1024_model, tmp_path / "o", prefix="t")
    want = np.concatenate([[1, *sp.encode(d)] for d in docs])
    assert r.documents == 3 and np.array_equal(read_shard(tmp_path / "o" / "t_000000.bin"), want)
    r2 = prepare([txt], sp1024_model, tmp_path / "o", prefix="t", per_line=True, overwrite=True)
    assert r2.documents == 4


def test_bad_json_leaves_nothing_behind(sp1024_model, tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text("\n".join(json.dumps({"text": f"document {i} " * 20}) for i in range(50)) + "\n{broken\n")
    out = tmp_path / "o"
    with pytest.raises(GolfpackError, match="line 51: not valid JSON"):
        prepare([src], sp1024_model, out, shard_tokens=100)
    assert not out.exists()  # no shard, no temp folder, and not the -o folder this run created
    src.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(GolfpackError, match="string 'text' field"):
        prepare([src], sp1024_model, out)


def test_existing_shards_need_overwrite(sp1024_model, tmp_path):
    src = tmp_path / "d.txt"
    src.write_text("\n".join(f"line number {i}" for i in range(200)))
    out = tmp_path / "o"
    first = prepare([src], sp1024_model, out, shard_tokens=100, per_line=True, prefix="p")
    assert len(first.shards) > 3
    with pytest.raises(GolfpackError, match="overwrite=True"):
        prepare([src], sp1024_model, out, prefix="p")
    second = prepare([src], sp1024_model, out, prefix="p", per_line=True, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["p_000000.bin"]  # stale shards of the first run removed
    assert np.array_equal(read_shard(out / "p_000000.bin"), load_tokens(str(out / "p_*.bin")))
    assert second.tokens == first.tokens


@pytest.mark.parametrize("args,msg", [
    (["--shard-tokens", "0"], "shard_tokens must be positive, got 0 (--shard-tokens)"),
    (["--prefix", "../x"], "--prefix"),
])
def test_cli_errors(sp1024_model, tmp_path, args, msg):
    src = tmp_path / "d.txt"
    src.write_text("hello\n")
    res = CliRunner().invoke(main, ["prepare", str(src), "--tokenizer", str(sp1024_model), "-o", str(tmp_path / "o"), *args])
    assert res.exit_code != 0 and "Traceback" not in res.output
    assert res.output.strip().startswith("Error: ") and msg in res.output


def test_cli_missing_input_and_tokenizer(sp1024_model, tmp_path):
    res = CliRunner().invoke(main, ["prepare", str(tmp_path / "no.txt"), "--tokenizer", str(sp1024_model), "-o", str(tmp_path)])
    assert res.exit_code != 0 and "Error: input" in res.output and "not found" in res.output
    src = tmp_path / "d.txt"
    src.write_text("hello\n")
    res = CliRunner().invoke(main, ["prepare", str(src), "--tokenizer", str(tmp_path / "no.model"), "-o", str(tmp_path / "o")])
    assert res.exit_code != 0 and "Error: tokenizer" in res.output


def test_cli_file_used_as_folder_is_one_error_line(sp1024_model, tmp_path):
    """-o under a regular file: the OS error (ENOTDIR) becomes `Error: <path>: <reason>`, no traceback."""
    src = tmp_path / "d.txt"
    src.write_text("hello\n")
    out = tmp_path / "d.txt" / "sub"
    res = CliRunner().invoke(main, ["prepare", str(src), "--tokenizer", str(sp1024_model), "-o", str(out)])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert res.output.strip().splitlines() == [f"Error: {out}: Not a directory"]
    assert src.read_text() == "hello\n"


def test_failed_run_removes_only_the_folders_it_created(sp1024_model, tmp_path):
    src = tmp_path / "empty.txt"
    src.write_text("\n\n")  # no documents: prepare fails after creating -o
    nested = tmp_path / "a" / "b" / "c"
    with pytest.raises(GolfpackError, match="no documents"):
        prepare([src], sp1024_model, nested)
    assert not (tmp_path / "a").exists()  # all three levels were ours and empty
    kept = tmp_path / "existing"
    kept.mkdir()
    with pytest.raises(GolfpackError, match="no documents"):
        prepare([src], sp1024_model, kept / "new")
    assert kept.is_dir() and list(kept.iterdir()) == []  # the user's folder stays, our child of it goes
    with pytest.raises(GolfpackError, match="no documents"):
        prepare([src], sp1024_model, kept)
    assert kept.is_dir()  # existed before the run: never removed, even though empty
    res = CliRunner().invoke(main, ["prepare", str(src), "--tokenizer", str(sp1024_model), "-o", str(tmp_path / "cli")])
    assert res.exit_code == 1 and res.output.strip().splitlines() == ["Error: the inputs contain no documents; nothing to write"]
    assert not (tmp_path / "cli").exists()


# -- issue 11 class 6: a shard set is replaced as one unit -----------------------------------------------

def _set_of(folder, prefix="p") -> dict[str, bytes]:
    return {f.name: f.read_bytes() for f in sorted(folder.glob(f"{prefix}_*.bin"))}


def _old_and_new(sp1024_model, tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("\n".join(f"old line {i}" for i in range(150)))
    b.write_text("\n".join(f"a new and longer line {i}" for i in range(200)))
    ref_old, ref_new = tmp_path / "ref_old", tmp_path / "ref_new"
    prepare([a], sp1024_model, ref_old, shard_tokens=150, per_line=True, prefix="p")
    prepare([b], sp1024_model, ref_new, shard_tokens=250, per_line=True, prefix="p")
    old, new = _set_of(ref_old), _set_of(ref_new)
    assert old.keys() != new.keys() and len(old) > 3 and len(new) > 3  # different names and counts: a mix would show
    return a, b, old, new


def _no_exchange(monkeypatch):
    """Make the folder exchange fail as on a filesystem without RENAME_EXCHANGE: prepare takes the journal path."""
    import errno

    import golfpack.prepare as P

    def refuse(a, b):
        raise OSError(errno.EINVAL, "Invalid argument")
    monkeypatch.setattr(P, "_exchange_dirs", refuse)


def test_journal_fallback_crash_at_any_step_leaves_the_old_or_the_new_set(sp1024_model, tmp_path, monkeypatch):
    """Journal path (no exchange): every os.replace/unlink of the swap can be the last thing a killed run did; the
    next run (or recover_shard_set) must then find exactly one of the two sets, and readers refuse the folder meanwhile."""
    import os
    import shutil

    import golfpack.prepare as P
    from golfpack.errors import DataError
    from golfpack.prepare import recover_shard_set

    a, b, old, new = _old_and_new(sp1024_model, tmp_path)
    real_replace, real_unlink = os.replace, os.unlink
    step = 0
    journal_seen = False
    while True:
        out = tmp_path / f"o{step}"
        shutil.copytree(tmp_path / "ref_old", out)  # the old set, without re-encoding it
        calls = {"n": 0}

        def crash(real, calls=calls, step=step):
            def f(*args, **kw):
                calls["n"] += 1
                if calls["n"] == step + 1:
                    raise KeyboardInterrupt("killed")  # what a SIGKILL at this point would leave
                return real(*args, **kw)
            return f

        _no_exchange(monkeypatch)
        monkeypatch.setattr(P.os, "replace", crash(real_replace))
        monkeypatch.setattr(P.Path, "unlink", lambda self, missing_ok=False, _u=crash(real_unlink): _u(self))
        try:
            prepare([b], sp1024_model, out, shard_tokens=250, per_line=True, prefix="p", overwrite=True)
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.undo()
        if not finished and (out / ".p.swap.json").exists():
            journal_seen = True
            with pytest.raises(DataError, match="interrupted"):
                load_tokens(str(out / "p_*.bin"))
        recover_shard_set(out, "p")
        got = _set_of(out)
        assert got in (old, new), (step, sorted(got))
        assert not list(out.glob(".p.*")) and not list(tmp_path.glob(f".{out.name}.golfpack-new-*"))
        if finished:
            break
        step += 1
    assert step > len(new) and journal_seen  # every move and every removal was a crash point


def _others(folder):
    """Files of another prefix and of the user in the shard folder: the swap must carry them over untouched."""
    (folder / "q_000000.bin").write_bytes(b"another prefix's shard")
    (folder / "notes.txt").write_text("mine")
    return {"q_000000.bin": b"another prefix's shard", "notes.txt": b"mine"}


def _listing(folder, prefix="p"):
    """(the prefix's set, every other entry's bytes): what a kill may leave, read WITHOUT any recovery step."""
    files = {f.name: f.read_bytes() for f in folder.iterdir()}
    shards = {n: v for n, v in files.items() if n.startswith(f"{prefix}_")}
    return shards, {n: v for n, v in files.items() if n not in shards}


def test_exchange_crash_at_any_step_leaves_the_old_or_the_new_set_without_recovery(sp1024_model, tmp_path, monkeypatch):
    """Exchange path: a crash at each hard link, at the exchange and at the removal of the old folder leaves
    out_dir holding exactly one of the two sets (no recovery run), the other files untouched; the next
    run removes the temp folder left beside out_dir."""
    import shutil

    import golfpack.prepare as P

    a, b, old, new = _old_and_new(sp1024_model, tmp_path)
    real = {"link": P.os.link, "_exchange_dirs": P._exchange_dirs, "rmtree": shutil.rmtree}
    seen, step, finished = set(), 0, False
    while not finished:
        out = tmp_path / f"x{step}"
        shutil.copytree(tmp_path / "ref_old", out)  # the old set, without re-encoding it
        others = _others(out)
        calls = {"n": 0}

        def crash(fn, calls=calls, step=step):
            def f(*args, **kw):
                calls["n"] += 1
                if calls["n"] == step + 1:
                    raise KeyboardInterrupt("killed")
                return fn(*args, **kw)
            return f

        monkeypatch.setattr(P.os, "link", crash(real["link"]))
        monkeypatch.setattr(P, "_exchange_dirs", crash(real["_exchange_dirs"]))
        monkeypatch.setattr(P.shutil, "rmtree", crash(real["rmtree"]))
        try:
            prepare([b], sp1024_model, out, shard_tokens=250, per_line=True, prefix="p", overwrite=True)
            finished = True
        except KeyboardInterrupt:
            pass
        monkeypatch.undo()
        shards, rest = _listing(out)
        assert shards in (old, new) and rest == others, (step, sorted(shards))
        assert not (out / ".p.swap.json").exists()  # the exchange path never writes a journal
        seen.add("old" if shards == old else "new")
        step += 1
        prepare([b], sp1024_model, out, shard_tokens=250, per_line=True, prefix="p", overwrite=True)  # the next run
        assert _listing(out) == (new, others) and not list(tmp_path.glob(f".{out.name}.golfpack-new-*"))
    assert step >= 5 and seen == {"old", "new"}  # 2 links, the exchange, 2 removals: crashes before and after it


def test_symlinked_out_dir_keeps_its_link_and_mode(sp1024_model, tmp_path):
    import os
    import stat

    a, b, old, new = _old_and_new(sp1024_model, tmp_path)
    target = tmp_path / "real"
    prepare([a], sp1024_model, target, shard_tokens=150, per_line=True, prefix="p")
    os.chmod(target, 0o750)
    link = tmp_path / "link"
    link.symlink_to("real")  # relative link
    prepare([b], sp1024_model, link, shard_tokens=250, per_line=True, prefix="p", overwrite=True)
    assert link.is_symlink() and os.readlink(link) == "real"
    assert _set_of(target) == new and stat.S_IMODE(target.stat().st_mode) == 0o750
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # nothing left beside


def test_a_second_prepare_into_a_busy_folder_is_refused(sp1024_model, tmp_path):
    import golfpack.prepare as P
    from golfpack.errors import DataError

    a, b, old, new = _old_and_new(sp1024_model, tmp_path)
    out = tmp_path / "o"
    prepare([a], sp1024_model, out, shard_tokens=150, per_line=True, prefix="p")
    fd = P._lock(out)  # what a running prepare holds
    try:
        with pytest.raises(DataError, match="another `golfpack prepare` is writing"):
            prepare([b], sp1024_model, out, shard_tokens=250, per_line=True, prefix="q")
    finally:
        P._unlock(fd)
    assert _set_of(out) == old and not list(out.glob("q_*"))


def test_a_subfolder_in_out_dir_takes_the_journal_path(sp1024_model, tmp_path, monkeypatch):
    """Folders cannot be hard-linked into the new folder: the set is swapped by journal and the folder stays."""
    import golfpack.prepare as P

    a, b, old, new = _old_and_new(sp1024_model, tmp_path)
    out = tmp_path / "o"
    prepare([a], sp1024_model, out, shard_tokens=150, per_line=True, prefix="p")
    (out / "sub").mkdir()
    (out / "sub" / "f").write_text("kept")
    exchanged = []
    monkeypatch.setattr(P, "_exchange_dirs", lambda x, y: exchanged.append(1))
    prepare([b], sp1024_model, out, shard_tokens=250, per_line=True, prefix="p", overwrite=True)
    assert exchanged == [] and _set_of(out) == new and (out / "sub" / "f").read_text() == "kept"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith("p_")) == ["sub"]


# A fork server: imports once, then forks one process per run, so each SIGKILL hits a real process in the middle
# of prepare and a trial costs the prepare alone. It reaps a run only when told, so the pid we kill cannot have been
# reused. golfpack.tokenizer is replaced by its sentencepiece loader alone: the module imports torch (3 s here),
# and what is under test is the swap, not the tokenizer.
FORK_SERVER = r"""
import os, sys, types
import sentencepiece as spm
sys.modules["golfpack.tokenizer"] = types.SimpleNamespace(load_sentencepiece=lambda p: spm.SentencePieceProcessor(model_file=str(p)))
from golfpack.prepare import prepare
print("ready", flush=True)
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            prepare([sys.argv[1]], sys.argv[2], line.strip(), shard_tokens=40, per_line=True, prefix="p", overwrite=True)
            code = 0
        finally:
            os._exit(code)
    print(pid, flush=True)
    sys.stdin.readline()
    print(os.waitpid(pid, 0)[1], flush=True)
"""


@pytest.mark.parametrize("trials,old_lines,lines", [
    (5, 30, 40),  # ~6 old and ~10 new shards (each write is fsynced: the shard count sets the time)
    pytest.param(40, 100, 300, marks=pytest.mark.slow),
])
def test_kill_9_during_prepare_overwrite_leaves_old_or_new_set(sp1024_model, tmp_path, trials, old_lines, lines):
    """SIGKILL at random moments of `prepare --overwrite`; WITHOUT any recovery step the folder holds exactly the
    old or exactly the new set (bytes compared) and the other files untouched; the next run then removes the
    temp folder a kill may leave beside it."""
    import os
    import random
    import shutil
    import signal
    import subprocess
    import sys
    import time

    from golfpack.prepare import recover_shard_set

    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("\n".join(f"old line {i}" for i in range(old_lines)))
    b.write_text("\n".join(f"a new and longer line {i}" for i in range(lines)))
    prepare([a], sp1024_model, tmp_path / "ref_old", shard_tokens=30, per_line=True, prefix="p")
    prepare([b], sp1024_model, tmp_path / "ref_new", shard_tokens=40, per_line=True, prefix="p")
    old, new = _set_of(tmp_path / "ref_old"), _set_of(tmp_path / "ref_new")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    server = subprocess.Popen([sys.executable, "-c", FORK_SERVER, str(b), str(sp1024_model)], env=env, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert server.stdin and server.stdout

    def run(out, kill_after=None):
        server.stdin.write(f"{out}\n")
        server.stdin.flush()
        t, pid = time.perf_counter(), int(server.stdout.readline())
        if kill_after is not None:
            time.sleep(kill_after)
            os.kill(pid, signal.SIGKILL)  # still ours: the server has not reaped it
        server.stdin.write("reap\n")
        server.stdin.flush()
        return int(server.stdout.readline()), time.perf_counter() - t

    try:
        assert server.stdout.readline() == "ready\n"
        shutil.copytree(tmp_path / "ref_old", tmp_path / "timing")
        status, full = run(tmp_path / "timing")  # time a full run, then kill at random points of it
        assert status == 0 and _set_of(tmp_path / "timing") == new
        rng = random.Random(5)
        outcomes = []
        for i in range(trials):
            out = tmp_path / f"k{i}"
            shutil.copytree(tmp_path / "ref_old", out)
            others = _others(out)
            run(out, kill_after=rng.uniform(0.0, 1.1) * full)
            shards, rest = _listing(out)  # no recovery first
            assert shards in (old, new) and rest == others, (i, sorted(shards))
            assert not list(out.glob(".p.*"))
            outcomes.append("old" if shards == old else "new")
            recover_shard_set(out, "p")  # what the next prepare run does first
            assert not list(tmp_path.glob(f".k{i}.golfpack-new-*")) and _listing(out) == (shards, others)
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    assert outcomes  # (which of the two each kill left depends on timing; both are correct)


def test_stale_temp_folders_are_removed_by_the_next_run(sp1024_model, tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / ".p.partial-abc123").mkdir()
    (out / ".p.partial-abc123" / "p_000000.bin").write_bytes(b"junk")
    (out / ".q.partial-keep").mkdir()  # another prefix's: not ours to judge
    src = tmp_path / "d.txt"
    src.write_text("hello world\n")
    prepare([src], sp1024_model, out, per_line=True, prefix="p")
    assert sorted(p.name for p in out.iterdir()) == [".q.partial-keep", "p_000000.bin"]


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() != 0, reason="needs root to chown")
def test_the_new_folder_keeps_the_old_ones_owner(sp1024_model, tmp_path):
    """root preparing into a user's folder: the exchanged-in folder must not become root's."""
    import os

    a, b, old, new = _old_and_new(sp1024_model, tmp_path)
    out = tmp_path / "o"
    prepare([a], sp1024_model, out, shard_tokens=150, per_line=True, prefix="p")
    os.chown(out, 12345, 12346)
    prepare([b], sp1024_model, out, shard_tokens=250, per_line=True, prefix="p", overwrite=True)
    assert _set_of(out) == new and (out.stat().st_uid, out.stat().st_gid) == (12345, 12346)


def test_relative_out_dir_and_stale_new_folders_of_our_naming_only(sp1024_model, tmp_path, monkeypatch):
    """A relative -o works; the next run removes `.NAME.golfpack-new-XXXXXXXX` left beside it by a kill, and
    nothing that merely looks similar (another folder's, a longer name)."""
    a, b, old, new = _old_and_new(sp1024_model, tmp_path)
    monkeypatch.chdir(tmp_path)
    prepare([a], sp1024_model, "rel", shard_tokens=150, per_line=True, prefix="p")
    stale = tmp_path / ".rel.golfpack-new-abcd_123"
    keep = [tmp_path / ".relx.golfpack-new-abcd_123", tmp_path / ".rel.golfpack-new-abcd_123x"]
    for d in [stale, *keep]:
        d.mkdir()
        (d / "p_000000.bin").write_bytes(b"left by a kill")
    prepare([b], sp1024_model, "rel", shard_tokens=250, per_line=True, prefix="p", overwrite=True)
    assert _set_of(tmp_path / "rel") == new and not stale.exists() and all(d.is_dir() for d in keep)
