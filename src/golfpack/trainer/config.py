"""TrainConfig: every knob of a training run, one flat dataclass (flat like the baseline's env vars).

Sources, later wins: the dataclass defaults (= the challenge baseline) -> a preset -> a TOML/JSON
file (which may name its own `preset = "..."`) -> `--set key=value` overrides on the command line.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from golfpack.errors import UsageError
from golfpack.model import ModelConfig

# The baseline splits every step into this many micro-batches in total (8 GPUs x 1, or 1 GPU x 8),
# so any world size dividing it trains on exactly the same global batch.
MICROBATCH_DIVISOR = 8


@dataclass(frozen=True)
class TrainConfig:
    """One training run. Defaults are the challenge baseline (train_gpt.py) recipe."""

    # --- data ---------------------------------------------------------------------------------
    train_files: str = "data/datasets/fineweb10B_sp1024/fineweb_train_*.bin"  # glob of training shards
    val_files: str = "data/datasets/fineweb10B_sp1024/fineweb_val_*.bin"  # glob of val shards ("" = no validation)
    tokenizer_path: str = "data/tokenizers/fineweb_1024_bpe.model"  # sentencepiece model: vocab check + val_bpb bytes
    val_max_tokens: int = 0  # score only the first N val tokens (0 = all of them)
    out_dir: str = "runs/train"  # where final_model.pt, final_model.json and train.log go
    # --- model (-> golfpack.model.ModelConfig) -------------------------------------------------
    vocab_size: int = 1024  # tokenizer vocabulary
    num_layers: int = 9  # transformer blocks
    model_dim: int = 512  # residual width
    num_heads: int = 8  # query heads
    num_kv_heads: int = 4  # key/value heads (GQA)
    mlp_mult: float = 2.0  # MLP hidden = mlp_mult * model_dim
    tie_embeddings: bool = True  # output head shares tok_emb
    skip_weights: bool = True  # U-Net skips between mirrored blocks
    logit_softcap: float = 30.0  # logits = cap * tanh(raw / cap)
    rope_base: float = 10000.0  # RoPE frequency base
    qk_gain_init: float = 1.5  # initial per-head query gain
    tied_embed_init_std: float = 0.005  # tok_emb init std when tied
    activation: str = "relu2"  # MLP nonlinearity: relu2 | relu3 | leaky_relu2
    # --- schedule -----------------------------------------------------------------------------
    seed: int = 1337  # seeds python, numpy and torch (same on every rank -> identical init)
    iterations: int = 20000  # optimizer steps (upper bound when a wallclock cap is set)
    warmup_steps: int = 20  # real steps run to prime compile/allocator, then model+optimizer+data are reset
    warmdown_iters: int = 1200  # lr decays linearly to 0 over the last this-many steps (0 = constant lr)
    max_wallclock_seconds: float = 600.0  # training-time cap; warmdown is placed by the measured step time (0 = no cap)
    train_batch_tokens: int = 524_288  # GLOBAL tokens per optimizer step (all ranks, all micro-batches)
    train_seq_len: int = 1024  # training sequence length
    val_loss_every: int = 1000  # validate every N steps (0 = only at the end)
    val_batch_tokens: int = 524_288  # global val batch (baseline VAL_BATCH_SIZE): each rank forwards val_batch_tokens // 8 tokens at a time
    train_log_every: int = 200  # log train_loss every N steps (and each of the first 10)
    # --- optimizers ---------------------------------------------------------------------------
    embed_lr: float = 0.6  # Adam lr of tok_emb when embeddings are untied
    head_lr: float = 0.008  # Adam lr of lm_head (untied only)
    tied_embed_lr: float = 0.05  # Adam lr of tok_emb when tied
    matrix_lr: float = 0.04  # Muon lr of the 2-D block matrices
    scalar_lr: float = 0.04  # Adam lr of vectors/scalars and control tensors (gains, mixes, skips)
    muon_momentum: float = 0.95  # Muon momentum after warmup
    muon_momentum_warmup_start: float = 0.85  # Muon momentum at step 0
    muon_momentum_warmup_steps: int = 500  # steps of linear momentum warmup
    muon_backend_steps: int = 5  # Newton-Schulz iterations
    beta1: float = 0.9  # Adam beta1
    beta2: float = 0.95  # Adam beta2
    adam_eps: float = 1e-8  # Adam epsilon
    grad_clip_norm: float = 0.0  # global grad-norm clip (0 = off)
    # --- quantization-aware training ----------------------------------------------------------
    qat_policy: str = ""  # packer policy name or file whose fake-quantized weights the forward sees ("" = off)
    qat_start_frac: float = 0.85  # in [0, 1]: switch QAT on at this fraction of `iterations` (1 disables this trigger)
    qat_start_time_frac: float = 0.85  # in [0, 1]: ... or at this fraction of max_wallclock_seconds, whichever is first (1 = off)
    # --- EMA ----------------------------------------------------------------------------------
    ema_decay: float = 0.0  # EMA of weights, e.g. 0.997; the EMA is what gets saved and validated (0 = off)
    # --- runtime ------------------------------------------------------------------------------
    device: str = "auto"  # auto | cuda | cpu
    compile: str = "auto"  # torch.compile: auto (on for CUDA, off for CPU) | on | off
    bf16: bool = True  # CUDA only: bf16 autocast + bf16 tok_emb storage as the baseline (CPU is plain fp32)
    threads: int = 0  # torch CPU threads (0 = torch default)

    def __post_init__(self) -> None:
        # Checks are written as `not (ok)` so NaN fails them too; each names the field, the allowed
        # range and the default to fall back to. All of this runs before any data or model is touched.
        problems = []

        def bad(name: str, rule: str) -> None:
            problems.append(f"{name} must be {rule}, got {getattr(self, name)!r} (default {_DEFAULTS[name]!r})")

        for name in ("iterations", "train_batch_tokens", "train_seq_len", "val_batch_tokens", "muon_backend_steps"):
            if not getattr(self, name) >= 1:
                bad(name, ">= 1")
        for name in ("warmup_steps", "warmdown_iters", "val_loss_every", "train_log_every", "val_max_tokens", "threads",
                     "muon_momentum_warmup_steps"):
            if not getattr(self, name) >= 0:
                bad(name, ">= 0")
        for name in ("embed_lr", "head_lr", "tied_embed_lr", "matrix_lr", "scalar_lr", "adam_eps", "grad_clip_norm"):
            if not 0.0 <= getattr(self, name) < math.inf:
                bad(name, "a finite number >= 0")
        for name in ("rope_base", "logit_softcap"):
            if not 0.0 < getattr(self, name) < math.inf:
                bad(name, "a finite number > 0")
        if not 0.0 <= self.tied_embed_init_std < math.inf:
            bad("tied_embed_init_std", "a finite number >= 0")
        if not 0.0 <= self.max_wallclock_seconds < math.inf:
            bad("max_wallclock_seconds", "a finite number >= 0 (0 = no cap)")
        for name in ("beta1", "beta2", "muon_momentum", "muon_momentum_warmup_start"):
            if not 0.0 <= getattr(self, name) < 1.0:
                bad(name, "in [0, 1)")
        if not 0.0 <= self.ema_decay < 1.0:
            bad("ema_decay", "in [0, 1) (0 = off)")
        for name in ("qat_start_frac", "qat_start_time_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                bad(name, "in [0, 1] (1 = this trigger off)")
        if self.device not in ("auto", "cuda", "cpu"):
            problems.append(f"device must be auto, cuda or cpu, got {self.device!r}")
        if self.compile not in ("auto", "on", "off"):
            problems.append(f"compile must be auto, on or off, got {self.compile!r}")
        if not 0.0 < self.mlp_mult < math.inf or self.mlp_mult * self.model_dim != int(self.mlp_mult * self.model_dim):
            problems.append(f"mlp_mult * model_dim must be a positive integer, got {self.mlp_mult} * {self.model_dim}")
        if problems:
            raise UsageError("invalid training config: " + "; ".join(problems))
        try:
            self.model_config()
        except ValueError as e:
            raise UsageError(f"invalid training config: {e}") from None

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            vocab_size=self.vocab_size,
            num_layers=self.num_layers,
            model_dim=self.model_dim,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            mlp_hidden=int(self.mlp_mult * self.model_dim),
            tie_embeddings=self.tie_embeddings,
            skip_weights=self.skip_weights,
            logit_softcap=self.logit_softcap,
            rope_base=self.rope_base,
            qk_gain_init=self.qk_gain_init,
            tied_embed_init_std=self.tied_embed_init_std,
            activation=self.activation,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# Presets: differences from the defaults only.
PRESETS: dict[str, dict[str, Any]] = {
    # The challenge's naive baseline: 9x512, 8 heads / 4 KV, MLP 2x, seq 1024, 524,288 tokens/step.
    "baseline": {},
    # Seed record (PR #160 lineage): wider MLP, longer context, bigger batch, longer warmdown, lower lrs.
    "mlp3x-seq2048": {
        "mlp_mult": 3.0,
        "train_seq_len": 2048,
        "train_batch_tokens": 786_432,
        "warmdown_iters": 3000,
        "tied_embed_lr": 0.03,
        "matrix_lr": 0.02,
        "scalar_lr": 0.02,
        "muon_momentum": 0.99,
        "qat_policy": "int6+tok8",
    },
    # Trains on 2 CPU cores in about a minute: for tests and the README demo.
    "tiny": {
        "num_layers": 2,
        "model_dim": 128,
        "num_heads": 4,
        "num_kv_heads": 2,
        "train_seq_len": 128,
        "train_batch_tokens": 4096,
        "iterations": 150,
        "warmup_steps": 0,
        "warmdown_iters": 50,
        "max_wallclock_seconds": 0.0,
        "val_loss_every": 50,
        "val_batch_tokens": 16_384,
        "val_max_tokens": 32_768,
        "train_log_every": 10,
        "tied_embed_lr": 0.05,
        "matrix_lr": 0.04,
        "scalar_lr": 0.04,
        "muon_momentum_warmup_steps": 50,
        "device": "cpu",
        "out_dir": "runs/tiny",
    },
}

_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_DEFAULTS = {f.name: f.default for f in _FIELDS.values()}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise UsageError(f"unknown training preset {name!r}: use one of {', '.join(PRESETS)} or a .toml/.json file")
    return TrainConfig(**PRESETS[name])


def _coerce(key: str, value: Any, where: str) -> Any:
    """Check/convert one value to the field's type (strings from --set are parsed)."""
    if key not in _FIELDS:
        raise UsageError(f"{where}: unknown training option {key!r} (see `golfpack train --help-config`)")
    typ = _FIELDS[key].type
    try:
        if typ == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"expected true/false, got {value!r}")
        if typ == "int":
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(f"expected an integer, got {value!r}")
            try:
                return int(str(value).replace("_", "")) if isinstance(value, str) else int(value)
            except ValueError:
                raise ValueError(f"expected an integer, got {value!r}") from None
        if typ == "float":
            if isinstance(value, bool):
                raise ValueError(f"expected a number, got {value!r}")
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        if typ == "str":
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {value!r}")
            return value
    except ValueError as e:
        raise UsageError(f"{where}: option {key}: {e}") from None
    raise AssertionError(f"unhandled field type {typ}")  # pragma: no cover


def load_config(path: str | Path | None = None, preset_name: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Build a TrainConfig: preset (from the argument or the file's `preset` key), then file values, then overrides.

    `path` may also be a bare preset name (`--config tiny`).
    """
    values: dict[str, Any] = {}
    file_values: dict[str, Any] = {}
    if path is not None and str(path) in PRESETS and not Path(path).exists():
        preset_name = preset_name or str(path)
        path = None
    if path is not None:
        from golfpack._io import load_table

        if not Path(path).is_file():
            raise UsageError(f"config file {path}: not found (or use a preset name: {', '.join(PRESETS)})")
        file_values = dict(load_table(path, "config file"))
        file_preset = file_values.pop("preset", None)
        if preset_name is None and file_preset is not None:
            preset_name = str(file_preset)
    if preset_name is not None:
        if preset_name not in PRESETS:
            raise UsageError(f"unknown training preset {preset_name!r}: use one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset_name])
    for k, v in file_values.items():
        values[k] = _coerce(k, v, f"config file {path}")
    for text in overrides:
        key, sep, val = text.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"bad override {text!r}: expected KEY=VALUE, e.g. iterations=500", param="overrides")
        values[key.strip()] = _coerce(key.strip(), val.strip(), f"override {text!r}")
    return TrainConfig(**values)


def config_help() -> str:
    """One line per option: name, type, default and the comment from the source."""
    import inspect

    src = inspect.getsource(TrainConfig)
    comments: dict[str, str] = {}
    for line in src.splitlines():
        s = line.strip()
        name = s.split(":", 1)[0]
        if name in _FIELDS and "#" in s:
            comments[name] = s.split("#", 1)[1].strip()
    default = TrainConfig()
    return "\n".join(
        f"{n} ({f.type}, default {getattr(default, n)!r}): {comments.get(n, '')}" for n, f in _FIELDS.items()
    )


__all__ = ["MICROBATCH_DIVISOR", "PRESETS", "TrainConfig", "config_help", "load_config", "preset"]
