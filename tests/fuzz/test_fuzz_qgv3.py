"""The QGv3 fuzz target: mutated real artifacts (checksums recomputed) in a child process under an
address-space limit and a per-case time bound. Every reader may only refuse with its error type
(GolfpackError; the decoder's ValueError), and lib, exported decoder and CLI must agree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from golfpack.formats.qgv3_constants import DEFAULT_LIMITS

HERE = Path(__file__).resolve().parent
MEM_MIB = 1536  # address space the child may add to what it has after imports
PER_CASE_S = 5.0


def _campaign(seed: int, cases: int, samples: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1] / "src")}
    proc = subprocess.run([sys.executable, str(HERE / "qgv3_fuzz.py"), str(seed), str(cases), str(MEM_MIB), str(PER_CASE_S),
                           str(samples)],
                          capture_output=True, text=True, env=env, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check(rep: dict, cases: int, samples: int) -> None:
    assert rep["cases"] == cases
    assert sum(rep["subprocess"].values()) == samples and set(rep["subprocess"]) == {"ok", "refused"}
    assert rep["failures"] == [], json.dumps(rep["failures"][:3])[:3000]
    assert rep["verdicts"].get("crash", 0) == 0
    # the mutations reach every verdict: refused, accepted, and accepted-but-digest-mismatch
    assert rep["verdicts"]["refused"] > cases // 2 and rep["verdicts"]["ok"] > cases // 20 and rep["verdicts"].get("digest", 0) > 0
    assert rep["max_case_s"] < PER_CASE_S


def test_fuzz_a_few_hundred_cases() -> None:
    rep = _campaign(seed=20261201, cases=300, samples=6)
    _check(rep, 300, 6)
    assert rep["justified"].get("config", 0) > 0  # the config-only refusals are reached (and each was re-checked)


@pytest.mark.slow
def test_fuzz_twenty_thousand_cases() -> None:
    rep = _campaign(seed=11, cases=20_000, samples=40)
    print(f"20,000 cases in {rep['seconds']} s, worst case {rep['max_case_s']} s, maxrss {rep['maxrss_mib']} MiB, {rep['verdicts']}, "
          f"justified {rep['justified']}, subprocess {rep['subprocess']}")
    _check(rep, 20_000, 40)


def test_decoder_limits_are_the_readers() -> None:
    """The exported decoder spells the reader's Limits out (it cannot import them): they must agree."""
    from golfpack.packer.decoder import decoder_source

    ns: dict = {}
    src = decoder_source()
    line = next(x for x in src.splitlines() if x.startswith("L = {"))
    exec(line, ns)  # noqa: S102 - our own source line
    L = ns["L"]
    d = DEFAULT_LIMITS
    assert L == {"header": d.max_header_bytes, "raw": d.max_raw_bytes, "numel": d.max_numel, "blocks": d.max_blocks,
                 "streams": d.max_streams, "tensors": d.max_tensors, "name": d.max_name_len, "ndim": d.max_ndim,
                 "out": d.max_output_bytes}


def test_mutations_recompute_checksums() -> None:
    """A mutated file passes the preamble/header/block crc checks, so the parser behind them is what is tested."""
    import random
    import zlib

    from tests.fuzz.qgv3_fuzz import base_artifacts, mutate, split

    rng = random.Random(3)
    bases = base_artifacts()
    checked = 0
    for _ in range(60):
        data = mutate(rng, rng.choice(bases))
        try:
            _hc, h, blocks = split(data)
        except Exception:  # noqa: BLE001 - text-level edits make headers that are not JSON: skip those
            continue
        hs = int.from_bytes(data[12:16], "little")
        assert zlib.crc32(data[24 : 24 + hs]) == int.from_bytes(data[20:24], "little")
        for b, s in zip(h["blocks"], blocks):
            if isinstance(b, dict) and isinstance(b.get("crc"), int):
                assert zlib.crc32(s) == b["crc"]
        checked += 1
    assert checked > 30


def test_the_justified_differences_are_rechecked_not_waved_through(tmp_path) -> None:
    """A policy-only refusal (lib refuses, decoder accepts) counts as justified only because the same file with
    `policy: null` gets the decoder's verdict; the same verdicts for a file that lib refuses for more are a failure."""
    from click.testing import CliRunner

    from golfpack.cli import main as cli
    from tests.fuzz.qgv3_fuzz import base_artifacts, build, load_decoder, problems, split, verdicts

    dec, d = load_decoder()
    hc, h, blocks = split(base_artifacts()[0])
    h["policy"] = {"rules": [{"spec": "INT6"}]}
    data = build(hc, h, blocks)
    v = verdicts(data, tmp_path / "p.qg3", dec, CliRunner(), cli)
    assert (v["lib"], v["dec"]) == ("refused", "ok")
    assert problems(v, data, tmp_path / "s.qg3") == ([], "policy")
    h["tensors"][0]["dtype"] = ["float32"]  # refused for this too: nulling the policy does not make lib agree
    both = build(hc, h, blocks)
    assert problems(v, both, tmp_path / "s.qg3")[0] == ["lib says refused, decoder says ok"]


def test_real_process_verdicts_are_parsed_as_the_in_process_ones() -> None:
    """CLI_LOOP's output: exit 0 = ok, one `Error:` line = refused; a traceback, a control character on stdout or
    anything else on stderr is a crash (what a stdout encoding bug in a real process looks like)."""
    from tests.fuzz.qgv3_fuzz import _subprocess_verdicts

    out = ("=== a\nfine\n=== exit 0\n=== b\n=== exit 1\n=== c\n=== exit crash\n=== d\nname \x1b[31m\n=== exit 0\n"
           "=== e\n=== exit 1\n")
    err = ("=== a\n=== b\nError: b: not a QGv3 file\n=== c\nTraceback (most recent call last):\nUnicodeEncodeError\n=== d\n"
           "=== e\nsome warning\nError: e: bad\n")
    got = _subprocess_verdicts(out, err)
    assert got["a"] == "ok" and got["b"] == "refused" and got["c"] == "CRASH traceback printed"
    assert got["d"] == "CRASH control character printed" and got["e"].startswith("CRASH unexpected stderr")
