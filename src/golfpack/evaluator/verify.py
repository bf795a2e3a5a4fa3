"""verify: load an artifact in a FRESH Python process and prove it rebuilds what the packer meant.

Why a subprocess: the challenge scores a model loaded from the artifact by a new process, so any
state that survives only in the packing process (cached tensors, monkeypatches, import side effects)
must not be able to make verification pass. The child:

1. reads the file and decodes it (`load_any`; QGv3 checks its stream checksums while decoding),
2. recomputes each tensor's sha256 digest from the dequantized values and compares it with the digest
   the packer wrote in the header (bit-for-bit equality with the packer's intent),
3. optionally compares every tensor with a raw checkpoint (`--against`): max |error|, relative RMS error,
4. optionally scores the fresh-loaded model (and the raw checkpoint) with the evaluator,
and prints one JSON report; the parent relays it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from golfpack.errors import BudgetError, DataError, FormatError, GolfpackError, UsageError


@dataclass
class EvalOptions:
    """Evaluator settings for `verify --eval` (see golfpack.evaluator.api.evaluate_path)."""

    val: str  # val shard path or glob
    tokenizer: str  # sentencepiece .model for the byte LUTs
    seq_len: int = 1024  # evaluation context length
    stride: int | None = None  # sliding-window stride (None: non-overlapping, as the baseline)
    max_tokens: int | None = None  # evaluate only the first N val tokens
    device: str = "cpu"  # torch device for the evaluation


# ------------------------------------------------------------------------------------------------
# child side (runs in the fresh process)


def _model_code_check(lm: Any, model: str | None, problems: list[str], rep: dict[str, Any]) -> None:
    """Compare the model code named in the header (adapter name, file sha256) with the file given now."""
    from golfpack.adapters import load_adapter

    meta = (getattr(lm.artifact, "meta", None) or {}) if lm.kind == "qgv3" else {}
    packed_sha, packed_name = meta.get("model_sha256"), meta.get("model_adapter")
    rep["model_adapter"] = packed_name
    if model is None:
        return
    ad = load_adapter(model)  # imported here, in the fresh process
    rep["model_file_sha256"] = ad.sha256
    if packed_sha is not None and ad.sha256 != packed_sha:
        problems.append(f"model code changed since packing: {ad.name} has sha256 {ad.sha256[:12]}..., the artifact was "
                        f"packed with {packed_name} sha256 {packed_sha[:12]}... (the score below uses the code as it is now)")


def _child(path: str, against: str | None, ev: EvalOptions | None, num_heads: int | None, activation: str | None,
           model: str | None = None) -> dict[str, Any]:
    from golfpack.loading import load_any

    t0 = time.perf_counter()
    lm = load_any(path, num_heads=num_heads, activation=activation)
    rep: dict[str, Any] = {
        "artifact": path,
        "kind": lm.kind,
        "bytes": os.path.getsize(path),
        "tensors": len(lm.state_dict),
        "params": sum(int(t.numel()) for t in lm.state_dict.values()),
        "load_seconds": round(time.perf_counter() - t0, 3),
        "config": None if lm.config is None else lm.config.to_dict(),
        "checksums_ok": True,  # decode raised otherwise
    }
    rows: dict[str, dict[str, Any]] = {n: {"name": n, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for n, t in lm.state_dict.items()}
    problems: list[str] = []
    if lm.kind == "qgv3":
        mism = lm.artifact.check_digests()  # the format's own check: rebuilt tensor vs the packer's sha256
        for rec in lm.artifact.records:
            rows[rec.name]["spec"] = rec.spec.label()
            rows[rec.name]["digest_ok"] = rec.name not in mism
        rep["digests_checked"] = len(lm.artifact.records)
        rep["digest_mismatches"] = mism
        if mism:
            problems.append(f"{len(mism)} tensor(s) differ from what the packer wrote: {', '.join(mism[:5])}")
    else:
        rep["digests_checked"] = 0
    if against:
        raw = load_any(against, num_heads=num_heads, activation=activation)
        rep["against"] = against
        missing = sorted(set(raw.state_dict) - set(lm.state_dict))
        extra = sorted(set(lm.state_dict) - set(raw.state_dict))
        if missing or extra:
            problems.append(f"key sets differ from {against}: missing {missing[:5]}, unexpected {extra[:5]}")
        worst = 0.0
        for n, t in lm.state_dict.items():
            if n not in raw.state_dict:
                continue
            r = raw.state_dict[n]
            if tuple(r.shape) != tuple(t.shape):
                problems.append(f"{n}: shape {list(t.shape)} vs checkpoint {list(r.shape)}")
                continue
            if t.is_floating_point():
                d = (t.double() - r.double()).abs()
                max_err = float(d.max()) if d.numel() else 0.0
                rms = float(r.double().pow(2).mean().sqrt()) if r.numel() else 0.0
                rows[n]["max_abs_err"] = max_err
                rows[n]["rel_rms_err"] = float(d.pow(2).mean().sqrt()) / rms if rms > 0 else 0.0
                worst = max(worst, max_err)
            else:
                rows[n]["exact"] = bool(torch.equal(t, r))
                if not rows[n]["exact"]:
                    problems.append(f"{n}: integer tensor differs from the checkpoint")
        rep["max_abs_err"] = worst
    _model_code_check(lm, model, problems, rep)
    if ev is not None:
        from golfpack.evaluator.api import evaluate_path

        if model is None and rep.get("model_adapter"):
            raise UsageError(f"{path} was packed with the model code {rep['model_adapter']}: pass that file as "
                             "model='FILE.py[:NAME]' to score it", param="model")
        cfg = lm.config
        kw = dict(val=ev.val, tokenizer=ev.tokenizer, seq_len=ev.seq_len, stride=ev.stride, max_tokens=ev.max_tokens, device=ev.device)
        heads = num_heads if num_heads is not None else (cfg.num_heads if cfg else None)
        act = activation if activation is not None else (cfg.activation if cfg else None)
        post = evaluate_path(path, num_heads=heads, activation=act, model=model, **kw)
        rep["post"] = post.to_dict()
        if against:
            pre = evaluate_path(against, num_heads=heads, activation=act, model=model, **kw)
            rep["pre"] = pre.to_dict()
            rep["val_bpb_gap"] = post.val_bpb - pre.val_bpb
            rep["val_loss_gap"] = post.val_loss - pre.val_loss
    rep["per_tensor"] = list(rows.values())
    rep["problems"] = problems
    rep["ok"] = not problems
    return rep


def _child_main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    try:
        ev = EvalOptions(**args["eval"]) if args.get("eval") else None
        rep = _child(args["path"], args.get("against"), ev, args.get("num_heads"), args.get("activation"), args.get("model"))
    except GolfpackError as e:  # the parent raises the same class again
        print(json.dumps({"error": str(e), "error_type": type(e).__name__, "param": getattr(e, "param", None)}))
        return 1
    except Exception as e:  # a decode failure (bad checksum, truncated file) is a verification result
        print(json.dumps({"error": f"{type(e).__name__}: {e}", "error_type": "FormatError"}))
        return 1
    print(json.dumps(rep))
    return 0


# ------------------------------------------------------------------------------------------------
# parent side


def verify_artifact(
    path: str | os.PathLike[str],
    *,
    against: str | os.PathLike[str] | None = None,
    eval_options: EvalOptions | None = None,
    num_heads: int | None = None,
    activation: str | None = None,
    timeout: float | None = None,
    model: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Run the checks in a fresh interpreter; returns the child's report (raises GolfpackError on load errors).

    `model`: 'FILE.py[:NAME]', the user's model code for the eval; the fresh process imports it itself."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: file not found")
    if against is not None and not Path(against).is_file():
        raise UsageError(f"against {against}: file not found", param="against")
    args = {
        "path": str(p),
        "against": None if against is None else str(against),
        "eval": None if eval_options is None else eval_options.__dict__,
        "num_heads": num_heads,
        "activation": activation,
        "model": None if model is None else _abs_model_spec(os.fspath(model)),
    }
    env = dict(os.environ)
    src_root = str(Path(__file__).resolve().parents[2])  # make the child import this same golfpack
    env["PYTHONPATH"] = src_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    proc = subprocess.run(
        [sys.executable, "-m", "golfpack.evaluator.verify", json.dumps(args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FormatError(f"verify: the fresh process failed ({tail})", path=p)
    rep = json.loads(lines[-1])
    if "error" in rep:
        raise _child_error(p, rep)
    return rep


def _abs_model_spec(spec: str) -> str:
    """FILE.py[:NAME] with FILE absolute (the child may resolve paths differently); checked here, before the child starts."""
    from golfpack.adapters import load_adapter

    ad = load_adapter(spec)
    return f"{ad.file.resolve()}:{ad.name.rpartition(':')[2]}" if ad.file is not None else spec


def _child_error(p: Path, rep: dict[str, Any]) -> GolfpackError:
    """The fresh process's error as the GolfpackError subclass it raised there (FormatError for a decode failure)."""
    msg = f"verify {p}: {rep['error']}"  # the child's message already names the file where it knows one
    kind = rep.get("error_type")
    if kind == "UsageError":
        return UsageError(msg, param=rep.get("param"))
    cls = {"FormatError": FormatError, "BudgetError": BudgetError, "DataError": DataError}.get(kind, GolfpackError)
    return cls(msg)


if __name__ == "__main__":  # the fresh process
    sys.exit(_child_main(sys.argv[1:]))
