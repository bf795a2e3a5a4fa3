"""Phase 1, the problem: a checkpoint, its candidate specs per tensor and their records, quantized ONCE.

The same records feed the cost tables, the sensitivity measurement and every exact pack, and
`Problem.encode` writes the very bytes `golfpack pack --policy <layout>` would (same records, same
header `meta` from `pack.artifact_meta`). Also here: the policy a layout is written as, and the
calibration tokens the search pins (`self_calibration` for calib 'self').
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from golfpack._io import write_bytes_atomic
from golfpack._version import __version__
from golfpack.budget.cache import cache_key
from golfpack.budget.config import SearchConfig
from golfpack.errors import FormatError, UsageError
from golfpack.formats.records import TensorRecord
from golfpack.formats.spec import TensorSpec
from golfpack.model import ModelConfig
from golfpack.packer.pack import artifact_meta


def exact_name_pattern(name: str) -> str:
    """A policy pattern matching exactly `name` (a glob when it has no glob metacharacters)."""
    return name if not any(ch in name for ch in "*?[]") else "re:" + re.escape(name)


def layout_policy(specs: dict[str, TensorSpec], name: str = "search", calibration: Any = None) -> Any:
    """A Policy that resolves to exactly `specs`: one rule per distinct spec listing exact names."""
    from golfpack.packer.policy import Policy, Rule

    by_spec: dict[str, list[str]] = {}
    for n, s in specs.items():
        by_spec.setdefault(s.label(), []).append(exact_name_pattern(n))
    rules = tuple(Rule(spec=TensorSpec.parse(lbl), match=tuple(names)) for lbl, names in by_spec.items())
    return Policy(name=name, rules=rules, default=TensorSpec.parse("fp16"), calibration=calibration)


def write_policy(path: str | Path, policy: Any, *, comment: dict[str, Any] | None = None) -> None:
    """Policy JSON loadable by `Policy.load` (and `golfpack pack --policy FILE`)."""
    d = policy.to_dict()
    write_bytes_atomic(path, (json.dumps(d, indent=2) + "\n").encode())


@dataclass
class Problem:
    """A checkpoint and its candidate records, shared by every phase."""

    src: Path
    src_bytes: bytes
    kind: str
    state_dict: dict[str, Tensor]
    config: ModelConfig | None  # the baseline family's config (None: the user's model code, `adapter`, defines it)
    names: list[str]
    candidates: dict[str, list[TensorSpec]]  # per tensor, in a fixed order
    code_bytes: int
    code_files: list[str]
    calibration: Any = None  # GptqCalibration of the +gptq candidates (digest filled once Hessians exist)
    tokenizer: str | None = None  # for a 'pydoc' calibration source
    records: dict[tuple[str, str], TensorRecord] = field(default_factory=dict)  # (name, label) -> record
    hessians: dict[str, Tensor] | None = None  # GPTQ Hessians, computed on first use
    alone: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (name, label, codec) -> one-record artifact bytes
    # codec -> layout (candidate index per tensor) -> exact artifact bytes: every exact pack of the search, kept so no
    # layout is packed twice (the fit, the select phase's alternative fits and presets share them)
    sizes: dict[str, dict[tuple[int, ...], int]] = field(default_factory=dict)
    adapter: Any = None  # golfpack.adapters.ModelAdapter that builds the model (None: the baseline family)
    _vocab: int | None = None  # a user's model: V read from its logits at load
    device: str = "cpu"  # torch device of the search's forwards (the GPTQ Hessians' calibration pass included)

    def build(self, state_dict: dict[str, Tensor] | None = None, device: str = "cpu") -> torch.nn.Module:
        """The runnable model with `state_dict` (default: the raw checkpoint's) through the adapter."""
        from golfpack.adapters import load_adapter

        return load_adapter(self.adapter).build(self.state_dict if state_dict is None else state_dict, self.config, device=device)

    @property
    def vocab_size(self) -> int:
        if self.config is not None and (self.adapter is None or self.adapter.is_baseline):
            return self.config.vocab_size
        if self._vocab is None:
            self._vocab = int(self.build().vocab_size)
        return self._vocab

    @property
    def config_dict(self) -> dict[str, Any]:
        """What identifies the architecture in cache keys: the baseline config, or the model code's name and sha256."""
        if self.adapter is None or self.adapter.is_baseline:
            assert self.config is not None
            return self.config.to_dict()
        return self.adapter.meta()

    @property
    def header_config(self) -> dict[str, Any] | None:
        return None if self.adapter is not None and not self.adapter.is_baseline else self.config.to_dict()  # type: ignore[union-attr]

    @property
    def sha(self) -> str:
        return hashlib.sha256(self.src_bytes).hexdigest()

    def record(self, name: str, spec: TensorSpec) -> TensorRecord:
        key = (name, spec.label())
        rec = self.records.get(key)
        if rec is None:
            from golfpack.packer.quantize import quantize_tensor

            h = self.gptq_hessians().get(name) if spec.needs_hessian else None
            rec = quantize_tensor(name, self.state_dict[name], spec, h)
            self.records[key] = rec
        return rec

    def quantize_all(self, pool: Any = None, on_done: Any = None) -> None:
        """Quantize every candidate not yet held, once, a tensor at a time (`quantize_candidates`: the +gptq ones of a
        matrix batched). `pool`: a concurrent.futures executor to run the tensors in (the Hessians are computed
        here first); `on_done(k)` after each tensor's k records."""
        from golfpack.packer.quantize import quantize_candidates

        jobs = [(n, [s for s in self.candidates[n] if (n, s.label()) not in self.records]) for n in self.names]
        jobs = [(n, specs) for n, specs in jobs if specs]
        hs = self.gptq_hessians() if any(s.needs_hessian for _, specs in jobs for s in specs) else {}

        def keep(specs: list[TensorSpec], recs: list[TensorRecord]) -> None:
            for s, r in zip(specs, recs):
                self.records[(r.name, s.label())] = r
            if on_done is not None:
                on_done(len(specs))

        if pool is None:
            for n, specs in jobs:
                keep(specs, quantize_candidates(n, self.state_dict[n], specs, hs.get(n)))
            return
        from concurrent.futures import as_completed

        # biggest first, so the last tensor to finish is a small one
        order = sorted(jobs, key=lambda j: -self.state_dict[j[0]].numel() * len(j[1]))
        futs = {pool.submit(quantize_candidates, n, self.state_dict[n], specs, hs.get(n)): specs for n, specs in order}
        for f in as_completed(futs):
            keep(futs[f], f.result())

    def gptq_hessians(self) -> dict[str, Tensor]:
        """Hessians of every matrix with a +gptq candidate, from the pinned calibration tokens (the
        same call `golfpack pack` makes when it replays the policy)."""
        if self.hessians is None:
            from golfpack.packer.hessian import hessians_for

            assert self.calibration.digest is not None, "GPTQ records before the calibration tokens were pinned (Problem.pin_calibration)"
            names = [n for n, c in self.candidates.items() if any(s.needs_hessian for s in c)]
            self.hessians, self.calibration = hessians_for(self.state_dict, self.config, names, self.calibration,
                                                           tokenizer=self.tokenizer, model=self.adapter, device=self.device)
        return self.hessians

    def pin_calibration(self, source: str) -> None:
        """Fix the calibration tokens (`source`: a shard glob or 'pydoc') and record their digest, which
        keys the caches and lets `pack` check a replay reads the same tokens."""
        from dataclasses import replace

        from golfpack.packer.calibration import calibration_batch

        cal = replace(self.calibration, source=source, digest=None)
        if any(s.needs_hessian for c in self.candidates.values() for s in c):  # only GPTQ/hmse read these tokens
            cal = replace(cal, digest=calibration_batch(cal, tokenizer=self.tokenizer, vocab_size=self.vocab_size).digest)
        self.calibration = cal

    def policy_of(self, specs: dict[str, TensorSpec]) -> Any:
        """The policy `golfpack pack` replays to exactly these specs (naming the GPTQ tokens if it needs them)."""
        return layout_policy(specs, calibration=self.calibration if any(s.needs_hessian for s in specs.values()) else None)

    def alone_bytes(self, name: str, spec: TensorSpec, codec: str) -> int:
        """Bytes of a QGv3 artifact holding just this record: the cost-table entry."""
        key = (name, spec.label(), codec)
        if key not in self.alone:
            from golfpack.formats.qgv3 import encode_qgv3

            self.alone[key] = len(encode_qgv3([self.record(name, spec)], config=None, policy=None, codec=codec, meta=None))
        return self.alone[key]

    def specs_of(self, choice: tuple[int, ...] | list[int]) -> dict[str, TensorSpec]:
        return {n: self.candidates[n][j] for n, j in zip(self.names, choice)}

    def size(self, choice: tuple[int, ...] | list[int], codec: str) -> int:
        """len(self.encode(choice, codec)), packed once per (layout, codec) for the whole search."""
        memo = self.sizes.setdefault(codec, {})
        key = tuple(int(j) for j in choice)
        if key not in memo:
            memo[key] = len(self.encode(key, codec))
        return memo[key]

    def encode(self, choice: tuple[int, ...] | list[int], codec: str) -> bytes:
        """The exact artifact bytes `golfpack pack --policy <layout> --codec codec` writes."""
        return self.encode_specs(self.specs_of(choice), codec)

    def encode_specs(self, specs: dict[str, TensorSpec], codec: str) -> bytes:
        from golfpack.formats.qgv3 import encode_qgv3

        policy = self.policy_of(specs)
        recs = [self.record(n, specs[n]) for n in self.names]
        return encode_qgv3(
            recs, config=self.header_config, policy=policy.to_dict(), codec=codec,
            meta=artifact_meta(self.src, self.kind, self.src_bytes, self.adapter),
        )


def load_problem(ckpt: str | Path, cfg: SearchConfig, model: Any = None) -> Problem:
    """`model`: the user's model code ('FILE.py[:NAME]' or a ModelAdapter); None is the baseline family."""
    from golfpack.adapters import load_adapter
    from golfpack.budget.sensitivity import candidate_specs
    from golfpack.packer.pack import count_code_bytes, load_input

    code_bytes, code_files = count_code_bytes(list(cfg.code))  # fail fast on a missing --code file
    src = Path(ckpt)
    if not src.is_file():
        raise UsageError(f"{src}: file not found", param="ckpt")
    adapter = load_adapter(model)
    sd, config, kind = load_input(src, num_heads=cfg.num_heads, activation=cfg.activation)
    from golfpack.model import GPT
    from golfpack.packer.calibration import GptqCalibration
    from golfpack.packer.hessian import weight_inputs

    vocab = None
    if not adapter.is_baseline:
        config = None  # the user's code defines the architecture
        net = adapter.build(sd)  # fails now, with the file named, if the code does not fit the weights
        vocab = net.vocab_size
        linear = set(weight_inputs(net)) if cfg.gptq else set()
    elif config is None:
        raise FormatError("not a baseline-family GPT (cannot infer its config); the search needs to run the model: "
                          "pass model='FILE.py[:NAME]' with your model code (docs/models.md)", path=src)
    elif cfg.gptq:  # GPTQ needs a linear layer's inputs; the module tree says which (no weights needed)
        with torch.device("meta"):
            linear = set(weight_inputs(GPT(config)))
    else:
        linear = set()
    cands = {
        n: candidate_specs(t, bits=cfg.bits, clips=cfg.clips, passthrough=cfg.passthrough, gptq=n in linear) for n, t in sd.items()
    }
    # the tokens are pinned (digest) by `pin_calibration`, after the floor check
    cal = GptqCalibration(source=cfg.gptq_calib or cfg.calib, batch=cfg.gptq_batch, seq=cfg.calib_seq)
    return Problem(src, src.read_bytes(), kind, sd, config, list(sd), cands, code_bytes, code_files, cal, cfg.tokenizer,
                   adapter=None if adapter.is_baseline else adapter, _vocab=vocab, device=cfg.device)


def self_calibration(p: Problem, cfg: SearchConfig) -> Path:
    """Sample the model's own text (`calibration.self_tokens`) and write it as a shard: at `cfg.calib_out`,
    else in the cache (reused by later searches), else in a temp folder. Returns the shard's path."""
    import tempfile

    from golfpack.formats.shards import write_shard
    from golfpack.packer.calibration import self_tokens

    # "gen2": sampled all sequences per generate call (calibration.generation_chunk), not 16 at a time
    key = cache_key("selfcal", p.sha, cfg.self_sequences, cfg.calib_seq, cfg.self_seed, __version__, "gen2",
                    *([] if p.adapter is None else [p.adapter.sha256]))
    cached = None if cfg.cache_dir is None else Path(cfg.cache_dir) / f"selfcal-{key}_train.bin"
    # no cache, no output: the temp folder under a content key (a rerun reuses it instead of piling up)
    dest = Path(cfg.calib_out) if cfg.calib_out else cached or Path(tempfile.gettempdir()) / f"golfpack-selfcal-{key}_train.bin"
    if cached is not None and cached.is_file():
        if dest != cached:
            write_bytes_atomic(dest, cached.read_bytes())
        return dest
    bos = 1  # the challenge shards' BOS; a given tokenizer says its own
    if cfg.tokenizer:
        from golfpack.tokenizer import load_sentencepiece

        bos = max(0, load_sentencepiece(cfg.tokenizer).bos_id())
    model = p.build(device=cfg.device)
    write_shard(dest, self_tokens(model, sequences=cfg.self_sequences, length=cfg.calib_seq, seed=cfg.self_seed, bos=bos,
                                  device=cfg.device, progress=cfg.progress))
    if cached is not None and dest != cached:
        write_bytes_atomic(cached, dest.read_bytes())
    return dest


__all__ = ["Problem", "exact_name_pattern", "layout_policy", "load_problem", "self_calibration", "write_policy"]
