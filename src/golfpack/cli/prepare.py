"""`golfpack prepare`: text -> challenge token shards (see golfpack.prepare)."""

from __future__ import annotations

import click

from golfpack._progress import progress_option
from golfpack.prepare import DEFAULT_SHARD_TOKENS


@click.command("prepare", context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, required=True, type=click.Path(dir_okay=False), metavar="TEXT...")
@click.option("--tokenizer", required=True, type=click.Path(dir_okay=False), metavar="SP.model", help="sentencepiece model.")
@click.option("-o", "--out-dir", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for the shards.")
@click.option("--prefix", default="tokens", show_default=True, help="Shard names: PREFIX_000000.bin, PREFIX_000001.bin, ...")
@click.option("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, show_default=True, help="Tokens per shard (last one shorter).")
@click.option("--format", "fmt", type=click.Choice(["auto", "txt", "jsonl"]), default="auto", show_default=True,
              help="auto: .jsonl/.ndjson are JSON lines, anything else plain text.")
@click.option("--per-line", is_flag=True, help="Plain text: one document per non-empty line (default: per blank-line-separated paragraph).")
@click.option("--text-field", default="text", show_default=True, help="JSON lines: field holding the document text.")
@click.option("--overwrite", is_flag=True, help="Replace existing PREFIX_*.bin shards in the output folder.")
@progress_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def prepare_cmd(inputs, tokenizer, out_dir, prefix, shard_tokens, fmt, per_line, text_field, overwrite, progress, as_json):
    """Encode TEXT files (txt or jsonl) into shards: every document is [BOS] + its token ids."""
    from golfpack.cli._common import emit
    from golfpack.prepare import prepare

    r = prepare(list(inputs), tokenizer, out_dir, shard_tokens=shard_tokens, prefix=prefix, fmt=fmt, per_line=per_line,
                text_field=text_field, overwrite=overwrite, progress=progress)
    lines = [
        f"documents: {r.documents:,}  tokens: {r.tokens:,}  input: {r.input_bytes:,} bytes  seconds: {r.seconds:.1f}",
        *(f"  {s['path']}  {s['tokens']:,} tokens" for s in r.shards),
    ]
    emit(r.to_dict(), as_json, lines)
