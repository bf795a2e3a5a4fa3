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
