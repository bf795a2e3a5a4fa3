"""Seeded QGv3 mutator and verdict runner (the fuzz target of issue 11).

Base artifacts are real writer output (every layout, codec, block mode, an empty tensor, a stored
config, plus tests/formats/data/qgv3_golden.bin). Each case mutates one artifact - a header value made
hostile, a key dropped or added, list entries duplicated or swapped, a number spelled 1e400, block bytes
flipped, cut or grown - and then RECOMPUTES every checksum and size field, so the mutation reaches the
parser instead of stopping at a crc.

Every case is judged by the three readers the issue names, plus the loader behind the CLI:
    lib       golfpack.formats.qgv3.decode_qgv3 (+ check_digests): "ok" / "digest" / "refused"
    dec       the exported standalone decoder (load(check=False), then load(check=True)): same verdicts
    cli       `golfpack inspect` in-process (click's runner): "ok" / "refused"
    load_any  what every command loads with (lib + the stored config checked against the shapes)
Only GolfpackError (lib, cli, load_any) and ValueError (dec) count as a refusal; anything else is a crash.
They must agree, and the two places where they may differ by design are checked, not waved through,
and counted in "justified":
    policy  lib refuses, dec accepts: the stored policy's shape is checked by the library only (the decoder
            ignores policy content). Justified only if the same file with `policy: null` gets dec's verdict.
    config  lib accepts, load_any and cli refuse: the stored config is checked (ModelConfig, shapes) only by
            load_any. Justified only if the same file with `config: null` is accepted by load_any.
    digest  lib/dec "digest" = cli "ok": inspect reads structure and does not recompute digests (`verify`
            does, in a fresh process per file: too slow per case).
A few cases per run also go through a real `golfpack` process (`golfpack.cli.main` on a real stdout,
as the console script runs it, with PYTHONIOENCODING=ascii: the strictest console), whose verdict must
equal the in-process one ("subprocess" in the report): stdout encoding bugs only show there.

Run as a script (the tests do, in a child with resource limits):
    python tests/fuzz/qgv3_fuzz.py SEED CASES MEM_MIB SECONDS_PER_CASE [SUBPROCESS_SAMPLES]
prints one JSON line: {"cases", "verdicts", "justified", "subprocess", "failures", "max_case_s", "seconds", "maxrss_mib"}.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import random
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN = HERE.parent / "formats" / "data" / "qgv3_golden.bin"

INF = "__FUZZ_INF__"  # placeholder, written as the JSON number 1e400 (which Python would parse as inf)
HOSTILE = [
    0, -1, 1, 2, 3, 7, 8, 9, 255, 256, 1024, 1025, 2**31, 2**32, 2**53 + 1, 2**63, 10**30, 10**309,
    0.5, 1.0, -0.0, 1e308, True, False, None, "", "x", "int3", "INT3", " int3 ", "int03", "int\u0663", "int6+gptq",
    "fp16", "exact", "float16", "bfloat16", "bool", "\x1b]0;owned\x07", "\x1b[31mred", "\ud800", "a" * 1025,
    [], [0], [1, 1], [2**31, 2**31], [0, 2**40], [1] * 9, {}, {"a": 1}, ["float16"], {"dtype": 1}, INF,
]
CONFIG_HOSTILE = {"num_layers": [2147483648, 0, -1, 1.5, "9", None, True, 1025, 2],
                  "logit_softcap": [INF, 1e308, 0, -1, "30", None, [30.0]],
                  "model_dim": [0, 7, 2**40, 4.0, False], "activation": [1, "gelu", None]}


def base_artifacts() -> list[bytes]:
    """Small real artifacts covering every stream kind, layout, codec and block mode."""
    import torch

    from golfpack.formats.codecs import available_codecs
    from golfpack.formats.qgv3 import encode_qgv3
    from golfpack.formats.spec import TensorSpec
    from golfpack.model import ModelConfig
    from golfpack.packer.quantize import quantize_tensor

    g = torch.Generator().manual_seed(11)
    recs = [quantize_tensor(f"w{b}", torch.randn(6, 8, generator=g), TensorSpec.parse(f"int{b}")) for b in (2, 3, 6, 8)]
    recs.append(quantize_tensor("v5", torch.randn(5, generator=g), TensorSpec.parse("int5:absmax")))
    for i, (spec, t) in enumerate([("fp16", torch.randn(7, generator=g)), ("bf16", torch.randn(2, 3, generator=g)),
                                   ("fp32", torch.randn(3, generator=g)), ("exact", torch.arange(-3, 4)),
                                   ("exact", torch.tensor([True, False])), ("fp16", torch.zeros(0))]):
        recs.append(quantize_tensor(f"p{i}", t, TensorSpec.parse(spec)))
    out = []
    codecs = [c for c in ("raw", "zlib", "lzma", "zstd", "brotli") if c in available_codecs()]
    for i, c in enumerate(codecs):
        for blocks in ("separate", "solid"):
            out.append(encode_qgv3(recs[i % 3 :], codec=c, blocks=blocks, meta={"n": i}))
    # a tiny real model with its config (the config is what load_any checks against the shapes)
    cfg = ModelConfig(vocab_size=16, num_layers=2, model_dim=8, num_heads=2, num_kv_heads=1, mlp_hidden=16)
    from golfpack.model import GPT

    torch.manual_seed(0)
    sd = GPT(cfg).state_dict()
    mrecs = [quantize_tensor(n, t, TensorSpec.parse("int6" if t.ndim == 2 else "fp16")) for n, t in sd.items()]
    out.append(encode_qgv3(mrecs, config=cfg.to_dict(), codec="zlib"))
    if GOLDEN.is_file():
        out.append(GOLDEN.read_bytes())
    return out


# ------------------------------------------------------------------------------------------------
# parse / rebuild with checksums recomputed


def split(data: bytes) -> tuple[int, dict, list[bytes]]:
    from golfpack.formats.codecs import decompress

    _m, _v, hc, _f, hs, hr, _c = struct.unpack_from("<8sHBBIII", data)
    h = json.loads(decompress(hc, data[24 : 24 + hs], hr))
    pos, blocks = 24 + hs, []
    for b in h["blocks"]:
        blocks.append(data[pos : pos + b["stored"]])
        pos += b["stored"]
    return hc, h, blocks


def build(hc: int, h: dict, blocks: list[bytes], *, fix: bool = True, text_edit=None) -> bytes:
    """The file for header `h` and stored `blocks`: block sizes/crcs and the header crc recomputed (fix=True)."""
    from golfpack.formats.codecs import compress

    if fix and isinstance(h.get("blocks"), list):
        for b, s in zip(h["blocks"], blocks):
            if isinstance(b, dict):
                b["stored"], b["crc"] = len(s), zlib.crc32(s)
    text = json.dumps(h, sort_keys=True, separators=(",", ":")).replace(f'"{INF}"', "1e400")
    if text_edit is not None:
        text = text_edit(text)
    raw = text.encode("utf-8", "surrogatepass")
    stored = compress(hc, raw) if hc in (0, 1, 2) else compress(1, raw)
    hc = hc if hc in (0, 1, 2) else 1
    return struct.pack("<8sHBBIII", b"QGv3\r\n\x1a\n", 3, hc, 0, len(stored), len(raw), zlib.crc32(stored)) + stored + b"".join(blocks)


def _nodes(v, path=()):
    yield path, v
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _nodes(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _nodes(x, (*path, i))


def _set(root, path, value):
    for p in path[:-1]:
        root = root[p]
    root[path[-1]] = value


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One hostile variant of `data` with every checksum recomputed."""
    hc, h, blocks = split(data)
    h = copy.deepcopy(h)
    op = rng.randrange(9)
    nodes = [p for p, _ in _nodes(h) if p]
    if op <= 2:  # a hostile value anywhere (several at once, sometimes)
        for _ in range(1 + (op == 2) * rng.randrange(1, 4)):
            _set(h, rng.choice([p for p, _ in _nodes(h) if p]), copy.deepcopy(rng.choice(HOSTILE)))
    elif op == 3:  # drop a key or add an unknown one
        dicts = [(p, v) for p, v in _nodes(h) if isinstance(v, dict) and v]
        p, d = rng.choice(dicts)
        if rng.random() < 0.5:
            del d[rng.choice(list(d))]
        else:
            d[rng.choice(["extra", "bits", "dtype", "rows", "scales", "alone", "scale_offset"])] = rng.choice(HOSTILE)
    elif op == 4:  # duplicate / swap / drop list entries
        lists = [v for _p, v in _nodes(h) if isinstance(v, list) and v]
        lst = rng.choice(lists)
        k = rng.randrange(3)
        if k == 0:
            lst.append(copy.deepcopy(rng.choice(lst)))
        elif k == 1 and len(lst) > 1:
            i, j = rng.sample(range(len(lst)), 2)
            lst[i], lst[j] = lst[j], lst[i]
        else:
            lst.pop(rng.randrange(len(lst)))
    elif op == 5:  # the model config made hostile (reaches load_any's ModelConfig checks)
        cfg = h["config"] if isinstance(h.get("config"), dict) else {}
        h["config"] = cfg
        k = rng.choice(list(CONFIG_HOSTILE))
        cfg[k] = rng.choice(CONFIG_HOSTILE[k])
    elif op == 6 and blocks:  # block bytes flipped, cut or grown (raw size kept: the codec must notice)
        i = rng.randrange(len(blocks))
        b = bytearray(blocks[i])
        k = rng.randrange(3)
        if k == 0 and b:
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif k == 1 and b:
            del b[rng.randrange(len(b)) :]
        else:
            b[rng.randrange(len(b) + 1) : 0] = rng.randbytes(rng.randrange(1, 16))
        blocks[i] = bytes(b)
    elif op == 7:  # a raw-size or count inflated while the bytes stay (bounds, allocation before validation)
        cands = [p for p in nodes if p and p[-1] in ("raw", "count", "rows", "offset", "at", "alone")]
        if cands:
            _set(h, rng.choice(cands), rng.choice([2**28, 2**28 + 1, 2**40, 2**62, 1 << 20]))
    else:  # text-level edits of the JSON (numbers respelled, whitespace, a trailing byte)
        def edit(t: str) -> str:
            k = rng.randrange(4)
            if k == 0:
                return t.replace(":3,", ":1e400,", 1)
            if k == 1:
                return t.replace(":0,", ":-0,", 1).replace(":2,", ":2.0,", 1)
            if k == 2:
                return t[: rng.randrange(len(t))]
            return t + rng.choice([" ", "x", "{}", "\x00"])

        return build(hc, h, blocks, text_edit=edit)
    return build(hc, h, blocks)


# ------------------------------------------------------------------------------------------------
# verdicts


def load_decoder():
    from golfpack.packer.decoder import decoder_source

    d = Path(tempfile.mkdtemp(prefix="qg3fuzz-"))
    (d / "qg3_decode.py").write_text(decoder_source())
    spec = importlib.util.spec_from_file_location("qg3_decode", d / "qg3_decode.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod, d


def verdicts(data: bytes, path: Path, dec, runner, cli) -> dict[str, str]:
    from golfpack.errors import GolfpackError
    from golfpack.formats.qgv3 import decode_qgv3
    from golfpack.loading import load_any

    path.write_bytes(data)
    out: dict[str, str] = {}
    try:
        art = decode_qgv3(data)
        out["lib"] = "digest" if art.check_digests() else "ok"
    except GolfpackError:
        out["lib"] = "refused"
    except Exception as e:  # noqa: BLE001 - the point: anything else is a crash
        out["lib"] = f"CRASH {type(e).__name__}: {str(e)[:120]}"
    try:
        dec.load(str(path), check=False)
        try:
            dec.load(str(path), check=True)
            out["dec"] = "ok"
        except ValueError:
            out["dec"] = "digest"
    except ValueError:
        out["dec"] = "refused"
    except Exception as e:  # noqa: BLE001
        out["dec"] = f"CRASH {type(e).__name__}: {str(e)[:120]}"
    try:
        load_any(path)
        out["load_any"] = "ok"
    except GolfpackError:
        out["load_any"] = "refused"
    except Exception as e:  # noqa: BLE001
        out["load_any"] = f"CRASH {type(e).__name__}: {str(e)[:120]}"
    res = runner.invoke(cli, ["inspect", str(path)])
    if res.exit_code == 0:
        out["cli"] = "ok"
    elif res.exception is not None and not isinstance(res.exception, SystemExit):
        out["cli"] = f"CRASH {type(res.exception).__name__}: {str(res.exception)[:120]}"
    elif "Traceback" in res.output:
        out["cli"] = "CRASH traceback printed"
    else:
        out["cli"] = "refused"
    if out["cli"] == "ok" and any(ord(c) < 32 and c not in "\n" for c in res.output):
        out["cli"] = "CRASH control character printed"
    return out


def _nulled(data: bytes, key: str) -> bytes | None:
    """`data` with header `key` set to null (checksums recomputed); None if the header is not JSON we can edit."""
    try:
        hc, h, blocks = split(data)
    except Exception:  # noqa: BLE001 - a text-level edit made the header unreadable
        return None
    if not isinstance(h, dict):
        return None
    h[key] = None
    return build(hc, h, blocks)


def _lib(data: bytes) -> str:
    from golfpack.errors import GolfpackError
    from golfpack.formats.qgv3 import decode_qgv3

    try:
        return "digest" if decode_qgv3(data).check_digests() else "ok"
    except GolfpackError:
        return "refused"


def _load_any_ok(data: bytes, path: Path) -> bool:
    from golfpack.errors import GolfpackError
    from golfpack.loading import load_any

    path.write_bytes(data)
    try:
        load_any(path)
        return True
    except GolfpackError:
        return False


def problems(v: dict[str, str], data: bytes, scratch: Path) -> tuple[list[str], str | None]:
    """(what is wrong, the justified difference if any) for one case's verdicts."""
    bad = [f"{k}: {x}" for k, x in v.items() if x.startswith("CRASH")]
    if bad:
        return bad, None
    why = None
    if v["lib"] != v["dec"]:
        nulled = _nulled(data, "policy")
        if v["lib"] == "refused" and nulled is not None and _lib(nulled) == v["dec"]:
            why = "policy"
        else:
            return [f"lib says {v['lib']}, decoder says {v['dec']}"], None
    if v["cli"] != v["load_any"]:
        return [f"load_any says {v['load_any']}, cli says {v['cli']}"], why
    lib_ok = v["lib"] in ("ok", "digest")
    if v["load_any"] == "ok" and not lib_ok:
        return ["load_any accepts what decode_qgv3 refuses"], why
    if lib_ok and v["load_any"] == "refused":
        nulled = _nulled(data, "config")
        if nulled is None or not _load_any_ok(nulled, scratch):
            return [f"lib says {v['lib']} but load_any and cli refuse, and not for the stored config"], why
        why = "config"
    return [], why


# A real `golfpack` process (the console script's entry point, on a real stdout) reading file paths from
# stdin; it brackets each run with a marker line on stdout and stderr and the exit code.
CLI_LOOP = r"""
import sys, traceback
from golfpack.cli import main
for line in sys.stdin:
    path = line.rstrip("\n")
    for f in (sys.stdout, sys.stderr):
        print("=== " + path, file=f, flush=True)
    try:
        main(["inspect", path], prog_name="golfpack")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = "crash"
    for f in (sys.stdout, sys.stderr):
        f.flush()
    print("=== exit " + str(code), file=sys.stdout, flush=True)
"""


def _subprocess_verdicts(out: str, err: str) -> dict[str, str]:
    """path -> verdict from CLI_LOOP's output files, judged as the in-process cli verdict is."""
    def sections(text: str) -> dict[str, str]:
        parts: dict[str, str] = {}
        cur = None
        for line in text.splitlines(keepends=True):
            if line.startswith("=== ") and not line.startswith("=== exit "):
                cur = line[4:].rstrip("\n")
                parts[cur] = ""
            elif cur is not None:
                parts[cur] += line
        return parts

    outs, errs = sections(out), sections(err)
    res = {}
    for path, text in outs.items():
        body, _sep, code = text.rpartition("=== exit ")
        code = code.strip()
        e = errs.get(path, "")
        if code == "crash" or "Traceback" in e or "Traceback" in body:
            res[path] = "CRASH traceback printed"
        elif code == "0":
            res[path] = "CRASH control character printed" if any(ord(c) < 32 and c != "\n" for c in body) else "ok"
        else:
            res[path] = "refused" if e.startswith("Error: ") and e.count("\n") == 1 else f"CRASH unexpected stderr {e[:80]!r}"
    return res


def run(seed: int, cases: int, mem_mib: int, per_case_s: float, samples: int = 0) -> dict:
    # The real-process CLI starts first, before our own imports and the address-space limit (a fresh interpreter
    # importing torch needs more than the cases do): its start-up overlaps ours and the cases, so on an idle
    # 2-core machine the real-process check costs next to no wall time.
    sub = None
    if samples:
        sd = Path(tempfile.mkdtemp(prefix="qg3fuzz-cli-"))
        sub_out, sub_err = open(sd / "sub.out", "w+", encoding="utf-8"), open(sd / "sub.err", "w+", encoding="utf-8")
        sub = subprocess.Popen([sys.executable, "-c", CLI_LOOP], stdin=subprocess.PIPE, stdout=sub_out, stderr=sub_err,
                               text=True, env={**os.environ, "PYTHONIOENCODING": "ascii"})  # the strictest console
    import torch
    from click.testing import CliRunner

    from golfpack.cli import main as cli

    torch.set_num_threads(1)
    bases = base_artifacts()
    dec, d = load_decoder()
    runner = CliRunner()
    sampled: dict[str, str] = {}
    # Memory bound: the address space the process has now (torch, numpy, codecs mapped) plus mem_mib.
    vm = int(next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmSize:"))) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + (mem_mib << 20), resource.RLIM_INFINITY))

    def alarm(*_):
        raise TimeoutError("case ran past its time bound")

    signal.signal(signal.SIGALRM, alarm)
    rng = random.Random(seed)
    tally: dict[str, int] = {}
    justified: dict[str, int] = {}
    failures, worst = [], 0.0
    t0 = time.perf_counter()
    for i in range(cases):
        data = mutate(rng, rng.choice(bases))
        t = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, per_case_s)
        try:
            v = verdicts(data, d / "case.qg3", dec, runner, cli)
        except (TimeoutError, MemoryError) as e:
            v = {"lib": f"CRASH {type(e).__name__}", "dec": "", "cli": "", "load_any": ""}
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        worst = max(worst, time.perf_counter() - t)
        key = v["lib"] if not v["lib"].startswith("CRASH") else "crash"
        tally[key] = tally.get(key, 0) + 1
        bad, why = problems(v, data, d / "scratch.qg3")
        if why:
            justified[why] = justified.get(why, 0) + 1
        if bad and len(failures) < 20:
            failures.append({"case": i, "problems": bad, "file_hex": data.hex() if len(data) < 4000 else None})
        first_ok = v["cli"] == "ok" and "ok" not in sampled.values()  # so the sample holds an accepted file too
        if sub is not None and sub.stdin and (i % max(1, cases // samples) == 0 or first_ok) and len(sampled) < samples:
            sample = d / f"sample{i}.qg3"
            sample.write_bytes(data)
            sampled[str(sample)] = v["cli"]
            sub.stdin.write(f"{sample}\n")
            sub.stdin.flush()
    sub_report: dict[str, int] = {}
    if sub is not None and sub.stdin:
        sub.stdin.close()
        sub.wait(timeout=300)
        sub_out.seek(0)
        sub_err.seek(0)
        got = _subprocess_verdicts(sub_out.read(), sub_err.read())
        for path, want in sampled.items():
            real = got.get(path, "CRASH no output")
            sub_report[real] = sub_report.get(real, 0) + 1
            if real != want and len(failures) < 20:
                failures.append({"case": path, "problems": [f"in-process cli says {want}, a real golfpack process says {real}"],
                                 "file_hex": None})
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"cases": cases, "verdicts": tally, "justified": justified, "subprocess": sub_report, "failures": failures,
            "max_case_s": round(worst, 3), "seconds": round(time.perf_counter() - t0, 1), "maxrss_mib": round(rss)}


if __name__ == "__main__":
    seed, n, mem, per = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    print(json.dumps(run(seed, n, mem, per, int(sys.argv[5]) if len(sys.argv) > 5 else 0)))
