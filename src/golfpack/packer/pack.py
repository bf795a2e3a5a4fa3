"""pack: state dict -> policy -> TensorRecords -> QGv3 bytes, with the byte budget enforced.

The one path every artifact takes. `pack_state_dict` does the work in memory (the search and the
benchmarks call it directly); `pack_file` adds loading any input (`load_any`), code-byte accounting
and the atomic write, and refuses - writing nothing - when model + code bytes exceed the budget.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor

from golfpack._io import write_bytes_atomic
from golfpack._progress import bar as progress_bar
from golfpack._version import __version__
from golfpack.errors import BudgetError, UsageError
from golfpack.formats.records import TensorRecord
from golfpack.formats.spec import TensorSpec
from golfpack.model import ModelConfig
from golfpack.packer.policy import Policy

DEFAULT_BUDGET = 16_000_000  # the challenge cap: code bytes + compressed model bytes
DEFAULT_CODEC = "lzma+rans"  # per stream the smaller: rans on level streams (5-8% under lzma), lzma on scales and the rest


@dataclass
class Artifact:
    """A packed artifact in memory: the QGv3 bytes plus everything that went into them.

    `save(path)` writes the bytes atomically; `data` is exactly what a fresh process will read.
    """

    data: bytes  # the QGv3 artifact bytes
    records: list[TensorRecord]  # what was stored, in state-dict order
    policy: Policy  # the policy actually applied (overrides included)
    codec: str  # codec used for the streams
    config: ModelConfig | None  # stored in the header (None for a foreign schema)
    budget: int = DEFAULT_BUDGET  # byte cap for model + code
    code_bytes: int = 0  # submission code files, counted byte for byte
    code_files: list[str] = field(default_factory=list)  # those files
    codec_sizes: dict[str, int] = field(default_factory=dict)  # every codec tried -> artifact size
    # --codec best: codecs not encoded in full because their sampled streams were > BEST_FULL_MARGIN over the
    # per-stream choice -> their estimated stream bytes (header excluded)
    codec_estimates: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)  # scale floors that swallow a tensor's range, raised GPTQ damping

    @property
    def model_bytes(self) -> int:
        return len(self.data)

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.code_bytes

    @property
    def headroom(self) -> int:
        return self.budget - self.total_bytes

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the artifact bytes to `path` atomically (the target is never left half-written)."""
        write_bytes_atomic(path, self.data)
        return Path(path)

    def tensor_rows(self) -> list[dict[str, Any]]:
        return [plan_row(r) for r in self.records]

    def report(self) -> dict[str, Any]:
        return {
            "policy": self.policy.name,
            "codec": self.codec,
            "codec_sizes": self.codec_sizes,
            "codec_estimates": self.codec_estimates,
            "params": sum(r.numel for r in self.records),
            "tensors": self.tensor_rows(),
            "model_bytes": self.model_bytes,
            "code_bytes": self.code_bytes,
            "code_files": self.code_files,
            "total_bytes": self.total_bytes,
            "budget": self.budget,
            "headroom": self.headroom,
            "fits": self.headroom >= 0,
            "warnings": self.warnings,
        }


def payload_bytes(r: TensorRecord) -> float:
    """Bytes the record costs before entropy coding (formats.records.payload_bytes, the one definition)."""
    return r.payload_bytes()


def plan_row(r: TensorRecord) -> dict[str, Any]:
    return {
        "name": r.name,
        "shape": list(r.shape),
        "dtype": r.orig_dtype,
        "spec": r.spec.label(),
        "params": r.numel,
        "payload_bytes": payload_bytes(r),
    }


def quantize_state_dict(
    state_dict: dict[str, Tensor],
    specs: dict[str, TensorSpec],
    *,
    hessians: dict[str, Tensor] | None = None,
    progress: bool | None = False,
    notes: list[str] | None = None,
) -> list[TensorRecord]:
    """One TensorRecord per tensor, in state-dict order. With `hessians`, a `+gptq` spec on a tensor that
    has none (not a linear weight: a 1-D gain, resid_mix) is stored with round-to-nearest on its grid.
    `notes` gets a line for every tensor whose GPTQ needed more than the default damping."""
    from golfpack.packer.quantize import quantize_tensor

    out = []
    for name, t in progress_bar(list(state_dict.items()), desc="quantize", unit="tensor", enabled=progress):
        spec, h = specs[name], (hessians or {}).get(name)
        if spec.gptq and h is None and hessians is not None:
            spec = replace(spec, gptq=False)  # not a linear layer's weight: GPTQ has no input to trade error through
        info: dict[str, Any] = {}
        try:
            out.append(quantize_tensor(name, t, spec, h, info))
            if notes is not None and info.get("damp", 0.01) > 0.01:
                notes.append(f"{name}: GPTQ's Cholesky failed at damping 0.01; used {info['damp']} x mean(diag H)")
        except ValueError as e:
            raise UsageError(f"{name}: {e}") from None
    return out


def encode(records: list[TensorRecord], *, codec: str, config: ModelConfig | None, policy: Policy, meta: dict[str, Any]) -> bytes:
    from golfpack.formats.qgv3 import encode_qgv3

    return encode_qgv3(records, config=None if config is None else config.to_dict(), policy=policy.to_dict(), codec=codec, meta=meta)


# `--codec best` writes a whole-file single-codec plan only when the streams' sampled trials put it within this
# fraction of the per-stream choice: farther off it cannot win (it differs only where a sample misleads or a
# solid block pays), and on a 36M-parameter model each full brotli/zstd/lzma pass of the levels costs tens of seconds.
BEST_FULL_MARGIN = 0.01


def best_candidates(records: list[TensorRecord], config: ModelConfig | None, policy: Policy,
                    meta: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    """The codecs `--codec best` encodes in full ("best" = the per-stream choice, and the default codec set, always:
    a sampled stream can mislead the per-stream choice, and `best` must never lose to the default), and the
    estimated bytes of those it skips (sampled trials scaled up, header excluded). Exact when no stream is
    sampled: then every codec is encoded. Run inside the `compressions()` the plans share (the trials are theirs)."""
    from golfpack.formats.qgv3_plan import confirms_loss, estimate_streams
    from golfpack.formats.qgv3_streams import collect

    names = [*available_codecs(), "best"]
    default = [] if DEFAULT_CODEC in names else [DEFAULT_CODEC]  # a set: not among the single codecs estimated
    contents = collect(records, config=None if config is None else config.to_dict(), policy=policy.to_dict(), meta=meta)
    est, exact = estimate_streams(contents)
    if exact:
        return names + default, {}
    bar = est["best"] * (1 + BEST_FULL_MARGIN)
    # within the margin, a codec that a second, disjoint sample shows losing again on every stream it lost is skipped too
    keep = [c for c in names if c == "best" or (est[c] <= bar and not confirms_loss(contents, c))] + default
    return keep, {c: round(est[c]) for c in names if c not in keep}


def available_codecs() -> list[str]:
    from golfpack.formats.codecs import available_codecs as avail

    return list(avail())


def is_codec(codec: object) -> bool:
    """THE rule for a codec argument: "best", an available codec, or distinct available ones joined by '+'
    ("lzma+rans": each stream gets the smallest of the set). `check_codec` and SearchConfig both use it."""
    if not isinstance(codec, str):
        return False
    parts, names = codec.split("+"), available_codecs()
    return codec == "best" or (all(c in names for c in parts) and len(set(parts)) == len(parts))


def check_codec(codec: object) -> None:
    """UsageError unless `is_codec(codec)`, saying what is wrong."""
    if is_codec(codec):
        return
    names = available_codecs()
    if isinstance(codec, str) and all(c in names for c in codec.split("+")):
        raise UsageError(f"codec set {codec!r} names a codec twice", param="codec")
    raise UsageError(f"unknown or unavailable codec {codec!r}: use one of {', '.join(names)}, a set of them joined by '+' "
                     f"(e.g. lzma+rans: the smallest per stream) or 'best'", param="codec")


def artifact_meta(src: str | os.PathLike[str], kind: str, src_bytes: bytes, model: Any = None) -> dict[str, Any]:
    """The header `meta` of an artifact packed from `src` (its bytes `src_bytes`, loaded as `kind`).

    The one definition: `pack_file` and the search's exact packs both use it, so a policy replayed
    through `golfpack pack` gives the very bytes the search measured. `model`: the adapter (a user's
    model file adds its name and sha256, so `verify` can say when the code changed)."""
    from golfpack.adapters import load_adapter

    return {
        "golfpack_version": __version__,
        "source": Path(src).name,
        "source_kind": kind,
        "source_sha256": hashlib.sha256(src_bytes).hexdigest(),
        **load_adapter(model).meta(),
    }


def pack_state_dict(
    state_dict: dict[str, Tensor],
    policy: Policy,
    *,
    codec: str = DEFAULT_CODEC,
    config: ModelConfig | None = None,
    meta: dict[str, Any] | None = None,
    hessians: dict[str, Tensor] | None = None,
    progress: bool | None = False,
) -> Artifact:
    """Quantize and encode in memory.

    codec="best" keeps the smallest of: QGv3's own per-stream choice (each stream with its best codec;
    reported as codec "best") and every available codec for the whole file whose sampled streams come
    within BEST_FULL_MARGIN of it (the others: `codec_estimates`).
    """
    from golfpack.packer.quantize import floor_warnings

    specs = policy.resolve(state_dict)
    notes = floor_warnings(state_dict, specs)
    records = quantize_state_dict(state_dict, specs, hessians=hessians, progress=progress, notes=notes)
    meta = {"golfpack_version": __version__, **(meta or {})}
    from golfpack.formats.qgv3_plan import compressions, run_in_threads

    if codec == "best":
        sizes: dict[str, int] = {}
        best: tuple[int, str, bytes] | None = None
        with compressions(progress=progress):  # one pool for every plan: what two plans compress alike, once
            names, estimates = best_candidates(records, config, policy, meta)
            datas = run_in_threads([partial(encode, records, codec=c, config=config, policy=policy, meta=meta) for c in names])
        for c, data in zip(names, datas):
            sizes[c] = len(data)
            if best is None or len(data) < best[0]:
                best = (len(data), c, data)
        assert best is not None
        return Artifact(data=best[2], records=records, policy=policy, codec=best[1], config=config, codec_sizes=sizes,
                        codec_estimates=estimates, warnings=notes)
    check_codec(codec)
    with compressions(progress=progress):
        data = encode(records, codec=codec, config=config, policy=policy, meta=meta)
    return Artifact(data=data, records=records, policy=policy, codec=codec, config=config, codec_sizes={codec: len(data)},
                    warnings=notes)


def gptq_hessians(sd: dict[str, Tensor], config: ModelConfig | None, policy: Policy, *, calib: str | None = None,
                  tokenizer: str | None = None, model: Any = None) -> tuple[dict[str, Tensor] | None, Policy]:
    """Hessians for the policy's `+gptq` tensors (None if it has none), and the policy with the calibration
    it used recorded in it (so the artifact header says which tokens the levels were fitted on)."""
    import dataclasses

    if not policy.uses_gptq:
        return None, policy
    from golfpack.packer.hessian import GptqCalibration, hessians_for

    if policy.calibration is None and calib is None:
        raise UsageError("this policy uses +gptq or hmse specs, which need calibration tokens: pass calib='TRAIN_SHARDS' "
                         "(or calib='pydoc' with a tokenizer)", param="calib")
    cal = policy.calibration or GptqCalibration(source=calib)
    names = [n for n, s in policy.resolve(sd).items() if s.needs_hessian]
    H, cal = hessians_for(sd, config, names, cal, tokenizer=tokenizer, source=calib, model=model)
    return H, dataclasses.replace(policy, calibration=cal)


def count_code_bytes(paths: list[str] | tuple[str, ...]) -> tuple[int, list[str]]:
    total, files = 0, []
    for p in paths:
        path = Path(p)
        if not path.is_file():
            raise UsageError(f"{p}: file not found", param="code")
        total += path.stat().st_size
        files.append(str(path))
    return total, files


def load_input(
    src: str | os.PathLike[str], *, num_heads: int | None = None, activation: str | None = None
) -> tuple[dict[str, Tensor], ModelConfig | None, str]:
    """Any .pt / .ptz / .qg3 -> (float state dict, config or None, kind)."""
    from golfpack.loading import load_any

    lm = load_any(src, num_heads=num_heads, activation=activation)
    return lm.state_dict, lm.config, lm.kind


def pack_loaded(
    sd: dict[str, Tensor],
    config: ModelConfig | None,
    policy: Policy,
    *,
    meta: dict[str, Any],
    codec: str = DEFAULT_CODEC,
    overrides: list[str] | tuple[str, ...] = (),
    calib: str | None = None,
    tokenizer: str | None = None,
    model: Any = None,
    require_config: bool = False,
    source: str = "state dict",
    progress: bool | None = False,
) -> Artifact:
    """Pack a loaded state dict in memory: the overrides must match, the model code (if any) must build it,
    `+gptq` specs get their Hessians, then quantize and encode. `pack_file` and `golfpack.pack` both end here."""
    from golfpack.adapters import load_adapter

    adapter = load_adapter(model)
    Policy.check_overrides_match(overrides, list(sd))
    if not adapter.is_baseline:
        config = None  # the user's code defines the architecture; the header names it (meta) instead
        if not policy.uses_gptq:
            adapter.build(sd)  # check the code builds this state dict now, not at eval time
    elif config is None and require_config:
        raise UsageError(
            f"{source}: cannot infer a baseline-family model config from its keys/shapes; pass num_heads/activation "
            "if that is the problem, model='FILE.py[:NAME]' with your own model code (docs/models.md), or "
            "require_config=False to pack the tensors anyway",
            param="require_config",
        )
    hessians, policy = gptq_hessians(sd, config, policy, calib=calib, tokenizer=tokenizer, model=adapter)
    return pack_state_dict(sd, policy, codec=codec, config=config, meta=meta, hessians=hessians, progress=progress)


def pack_file(
    src: str | os.PathLike[str],
    out: str | os.PathLike[str] | None,
    *,
    policy: Policy,
    codec: str = DEFAULT_CODEC,
    budget: int = DEFAULT_BUDGET,
    code: list[str] | tuple[str, ...] = (),
    dry_run: bool = False,
    num_heads: int | None = None,
    activation: str | None = None,
    require_config: bool = True,
    overrides: list[str] | tuple[str, ...] = (),
    calib: str | None = None,
    tokenizer: str | None = None,
    progress: bool | None = False,
    model: Any = None,
) -> Artifact:
    """Load `src`, pack it, check the budget, write `out` atomically (unless dry_run).

    `overrides`: the `--set` texts already folded into `policy`; each must match some tensor of `src`.
    `calib`/`tokenizer`: calibration tokens for `+gptq` specs (train shards or 'pydoc'); a policy written
    by the search names its own, and `calib` then only relocates them (the digest must match).
    `model`: 'FILE.py[:NAME]' (or a ModelAdapter) for a model outside the baseline family: it runs the
    calibration forwards of `+gptq` specs and is named in the header (see docs/models.md).
    """
    if not dry_run and out is None:
        raise UsageError("no output path, and not a dry run: nothing to write to", param="out")
    code_bytes, code_files = count_code_bytes(list(code))  # before the slow part: fail fast on a typo
    if out is not None and not dry_run:
        for c in code_files:  # its size now is not its size after the write: the total would be wrong
            if _same_file(c, out):
                raise UsageError(f"code file {c} is the output path {out}: the artifact cannot count itself as code", param="code")
    from golfpack.adapters import load_adapter

    adapter = load_adapter(model)
    sd, config, kind = load_input(src, num_heads=num_heads, activation=activation)
    res = pack_loaded(sd, config, policy, meta=artifact_meta(src, kind, Path(src).read_bytes(), adapter), codec=codec,
                      overrides=overrides, calib=calib, tokenizer=tokenizer, model=adapter,
                      require_config=require_config, source=str(src), progress=progress)
    res.budget, res.code_bytes, res.code_files = budget, code_bytes, code_files
    if dry_run:
        return res
    if res.total_bytes > budget:
        raise BudgetError(
            f"over budget: model {res.model_bytes:,} + code {code_bytes:,} = {res.total_bytes:,} bytes "
            f"> {budget:,} by {-res.headroom:,}; nothing written (use a smaller policy, e.g. the override 'PATTERN=int5')"
        )
    assert out is not None
    write_bytes_atomic(out, res.data)
    # Re-check with the sizes as they are now (a code file reached through another name may be what was just written).
    code_after, _ = count_code_bytes(code_files)
    if res.model_bytes + code_after > budget:
        Path(out).unlink()
        raise BudgetError(
            f"over budget after writing: model {res.model_bytes:,} + code {code_after:,} bytes > {budget:,} "
            f"(a code file changed during the write); {out} removed"
        )
    return res


def _same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """Same file by resolved path, or by inode where both exist (hard links, symlinks)."""
    pa, pb = Path(a), Path(b)
    if pa.resolve() == pb.resolve():
        return True
    try:
        return os.path.samefile(pa, pb)
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------
# inspect


def tensor_group(name: str) -> str:
    """Coarse group for byte breakdowns: embedding | attn | mlp | control | other."""
    from golfpack.packer.policy import is_control_name

    if is_control_name(name):
        return "control"
    if "tok_emb" in name or "lm_head" in name:
        return "embedding"
    if ".attn." in name:
        return "attn"
    if ".mlp." in name:
        return "mlp"
    return "other"


def describe_artifact(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Per-tensor byte breakdown of an artifact.

    raw_bytes: what the tensor occupies in its streams before compression (levels at the stream's
    layout width - bits/8 dense, 1 byte in a byte container - plus scales; or passthrough bytes).
    stored_bytes: its share of the compressed streams, split in proportion to raw bytes (codecs are not
    additive, so this is an attribution). Preamble + header are `overhead_bytes`, outside every tensor.
    A legacy .ptz/.pt is described as stored: every tensor at its own dtype, the file spread over them.
    """
    from golfpack.loading import load_any
    from golfpack.packer.quantize import quantize_tensor

    lm = load_any(path)
    total = Path(path).stat().st_size
    if lm.kind == "qgv3":
        art = lm.artifact
        records = list(art.records)
        raw, stored = art.raw_sizes(), art.tensor_shares()
        codecs = sorted({b["codec"] for b in art.blocks})
        codec: str | None = codecs[0] if len(codecs) == 1 else ("mixed: " + ", ".join(codecs) if codecs else None)
        overhead: int | None = art.header_bytes
        lqer = art.lqer_bytes()
        outl = art.outlier_bytes()
    else:
        lqer, outl = {}, {}
        records = [quantize_tensor(n, t, TensorSpec("passthrough", dtype="exact")) for n, t in lm.state_dict.items()]
        raw = {r.name: payload_bytes(r) for r in records}
        denom = sum(raw.values()) or 1.0
        stored = {n: total * b / denom for n, b in raw.items()}
        codec, overhead = lm.info.get("codec"), None
    rows = [
        {
            "name": r.name,
            "group": tensor_group(r.name),
            "spec": r.spec.label(),
            "shape": list(r.shape),
            "params": r.numel,
            "raw_bytes": raw[r.name],
            "stored_bytes": stored[r.name],
            "share": stored[r.name] / total if total else 0.0,
            **({"lqer_rank": lqer[r.name][0], "lqer_raw_bytes": lqer[r.name][1], "lqer_stored_bytes": lqer[r.name][2]}
               if r.name in lqer else {}),
            **({"outliers": outl[r.name][0], "outlier_raw_bytes": outl[r.name][1], "outlier_stored_bytes": outl[r.name][2]}
               if r.name in outl else {}),
        }
        for r in records
    ]
    groups: dict[str, dict[str, Any]] = {}
    for row in rows:
        g = groups.setdefault(row["group"], {"group": row["group"], "params": 0, "raw_bytes": 0.0, "stored_bytes": 0.0, "share": 0.0})
        for k in ("params", "raw_bytes", "stored_bytes", "share"):
            g[k] += row[k]
    return {
        "artifact": str(path),
        "kind": lm.kind,
        "bytes": total,
        "codec": codec,
        "params": sum(r.numel for r in records),
        "tensors": rows,
        "groups": sorted(groups.values(), key=lambda g: -g["stored_bytes"]),
        "overhead_bytes": overhead,
        "policy": None if lm.artifact is None else lm.artifact.policy,
        "config": None if lm.config is None else lm.config.to_dict(),
    }


def plot_breakdown(rep: dict[str, Any], out: str | os.PathLike[str]) -> None:
    """Bar chart of stored bytes per group and per tensor (top 30) to a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("plotting needs matplotlib: pip install 'golfpack[plot]'", param="plot") from None
    import io

    rows = sorted(rep["tensors"], key=lambda r: -r["stored_bytes"])[:30]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(4, 0.28 * len(rows))), gridspec_kw={"width_ratios": [1, 2]})
    gs = rep["groups"]
    ax1.barh([g["group"] for g in gs][::-1], [g["stored_bytes"] for g in gs][::-1], color="tab:blue")
    ax1.set_title("stored bytes by group")
    ax2.barh([f"{r['name']} [{r['spec']}]" for r in rows][::-1], [r["stored_bytes"] for r in rows][::-1], color="tab:orange")
    ax2.set_title(f"top tensors - {rep['bytes']:,} bytes total")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(out, buf.getvalue())


__all__ = [
    "describe_artifact",
    "plot_breakdown",
    "tensor_group",
    "DEFAULT_BUDGET",
    "DEFAULT_CODEC",
    "check_codec",
    "is_codec",
    "Artifact",
    "PackResult",
    "count_code_bytes",
    "pack_file",
    "pack_loaded",
    "pack_state_dict",
    "payload_bytes",
    "quantize_state_dict",
]


PackResult = Artifact  # the name before the public API; kept for scripts that import it
