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


def test_a_crash_at_any_step_of_the_swap_leaves_the_old_or_the_new_set(sp1024_model, tmp_path, monkeypatch):
    """Every os.replace/unlink of the swap can be the last thing a killed run did; the next run (or
    recover_shard_set) must then find exactly one of the two sets, and readers refuse the folder meanwhile."""
    import os

    import golfpack.prepare as P
    from golfpack.errors import DataError
    from golfpack.prepare import recover_shard_set

    a, b, old, new = _old_and_new(sp1024_model, tmp_path)
    real_replace, real_unlink = os.replace, os.unlink
    step = 0
    while True:
        out = tmp_path / f"o{step}"
        prepare([a], sp1024_model, out, shard_tokens=150, per_line=True, prefix="p")
        calls = {"n": 0}

        def crash(real, calls=calls, step=step):
            def f(*args, **kw):
                calls["n"] += 1
                if calls["n"] == step + 1:
                    raise KeyboardInterrupt("killed")  # what a SIGKILL at this point would leave
                return real(*args, **kw)
            return f

        monkeypatch.setattr(P.os, "replace", crash(real_replace))
        monkeypatch.setattr(P.Path, "unlink", lambda self, missing_ok=False, _u=crash(real_unlink): _u(self))
        try:
            prepare([b], sp1024_model, out, shard_tokens=250, per_line=True, prefix="p", overwrite=True)
            finished = True
        except KeyboardInterrupt:
            finished = False
        monkeypatch.undo()
        if not finished and (out / ".p.swap.json").exists():
            with pytest.raises(DataError, match="interrupted"):
                load_tokens(str(out / "p_*.bin"))
        recover_shard_set(out, "p")
        got = _set_of(out)
        assert got in (old, new), (step, sorted(got))
        assert not list(out.glob(".p.*"))  # no journal, no temp folder left
        if finished:
            break
        step += 1
    assert step > len(new)  # every move and every removal was a crash point


KILL_CHILD = r"""
import sys
from golfpack.prepare import prepare
prepare([sys.argv[1]], sys.argv[2], sys.argv[3], shard_tokens=40, per_line=True, prefix="p", overwrite=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("trials,lines", [(24, 3000)])
def test_kill_9_during_prepare_overwrite_leaves_old_or_new_set(sp1024_model, tmp_path, trials, lines):
    import os
    import random
    import signal
    import subprocess
    import sys
    import time

    from golfpack.prepare import recover_shard_set

    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_text("\n".join(f"old line {i}" for i in range(300)))
    b.write_text("\n".join(f"a new and longer line {i}" for i in range(lines)))
    prepare([a], sp1024_model, tmp_path / "ref_old", shard_tokens=30, per_line=True, prefix="p")
    prepare([b], sp1024_model, tmp_path / "ref_new", shard_tokens=40, per_line=True, prefix="p")
    old, new = _set_of(tmp_path / "ref_old"), _set_of(tmp_path / "ref_new")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # time a full run, then kill at random points of it (the swap is the last part)
    out = tmp_path / "timing"
    prepare([a], sp1024_model, out, shard_tokens=30, per_line=True, prefix="p")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", KILL_CHILD, str(b), str(sp1024_model), str(out)], env=env, check=True)
    full = time.perf_counter() - t
    rng = random.Random(5)
    outcomes = []
    for i in range(trials):
        out = tmp_path / f"k{i}"
        prepare([a], sp1024_model, out, shard_tokens=30, per_line=True, prefix="p")
        proc = subprocess.Popen([sys.executable, "-c", KILL_CHILD, str(b), str(sp1024_model), str(out)], env=env)
        time.sleep(rng.uniform(0.5, 1.0) * full)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        recover_shard_set(out, "p")  # what the next prepare run does first
        got = _set_of(out)
        assert got in (old, new), (i, sorted(got))
        assert not list(out.glob(".p.*"))
        outcomes.append("old" if got == old else "new")
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
