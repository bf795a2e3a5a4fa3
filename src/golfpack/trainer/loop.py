"""The training loop: the baseline recipe on 1..8 processes, CPU or CUDA.

`train(cfg)` validates everything (world size, batch shape, shards, tokenizer, policy) before any
compute, then runs: optional compile-priming warmup steps (state restored afterwards), the main loop
with grad accumulation over 8 // world_size micro-batches, the warmdown schedule, the QAT switch,
optional EMA, periodic validation, and finally rank 0 writes final_model.pt + final_model.json.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import math
import random
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from golfpack._io import atomic_write
from golfpack._progress import bar as progress_bar
from golfpack.errors import DataError, UsageError
from golfpack.evaluator import dist as dist_ctx
from golfpack.evaluator.api import evaluate
from golfpack.evaluator.dist import DistContext
from golfpack.model import GPT, ModelConfig
from golfpack.tokenizer import build_luts, load_sentencepiece
from golfpack.trainer.config import MICROBATCH_DIVISOR, TrainConfig
from golfpack.trainer.data import DistributedTokenLoader, check_train_shards
from golfpack.trainer.optim import build_optimizers, lr_multiplier, muon_momentum_at, newton_schulz, set_schedule

CHECKPOINT_NAME = "final_model.pt"
METADATA_NAME = "final_model.json"
LOG_NAME = "train.log"
METADATA_FORMAT = "golfpack-train/1"


@dataclass
class TrainResult:
    """What a run produced (rank 0 has the paths; other ranks get the same numbers)."""

    out_dir: Path
    steps: int  # optimizer steps taken (warmup steps excluded)
    tokens: int  # training tokens consumed = steps * train_batch_tokens
    train_time_ms: float  # training time, validation excluded (what the wallclock cap measures)
    wallclock_s: float  # whole run, end to end
    stopped_early: bool  # the wallclock cap ended training before `iterations`
    qat_start_step: int | None  # step at which QAT switched on (None = never)
    train_losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean train loss) every step
    val_history: list[dict[str, float]] = field(default_factory=list)  # {step, val_loss, val_bpb}
    checkpoint: Path | None = None
    metadata: Path | None = None
    log_path: Path | None = None

    @property
    def final_val(self) -> dict[str, float] | None:
        return self.val_history[-1] if self.val_history else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": str(self.out_dir),
            "steps": self.steps,
            "tokens": self.tokens,
            "train_time_ms": round(self.train_time_ms, 1),
            "wallclock_s": round(self.wallclock_s, 2),
            "stopped_early": self.stopped_early,
            "qat_start_step": self.qat_start_step,
            "first_train_loss": self.train_losses[0][1] if self.train_losses else None,
            "last_train_loss": self.train_losses[-1][1] if self.train_losses else None,
            "final_val": self.final_val,
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "metadata": str(self.metadata) if self.metadata else None,
            "log": str(self.log_path) if self.log_path else None,
        }


# ---------------------------------------------------------------------------------------------
# setup and validation (all before any compute)


def _pick_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError("device = 'cuda' but CUDA is not available: use device = 'cpu'", param="device")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


@dataclass
class _Plan:
    """Derived, validated quantities of a run."""

    grad_accum_steps: int
    local_tokens: int  # tokens per micro-batch per rank
    train_files: list[Path]
    val_tokens: np.ndarray | None
    qat_policy: Any  # golfpack.packer.policy.Policy | None


def val_batch_seqs(cfg: TrainConfig, world_size: int) -> int:
    """Sequences per validation forward on one rank.

    As the baseline: val_batch_tokens // (world_size * grad_accum_steps) tokens per rank, so one
    process scores 1/8 of val_batch_tokens per forward, the same per-forward size as each of 8 GPUs.
    """
    grad_accum = MICROBATCH_DIVISOR // world_size
    return cfg.val_batch_tokens // (world_size * grad_accum) // cfg.train_seq_len


def check_config(cfg: TrainConfig, world_size: int) -> _Plan:
    """Every user-fixable problem becomes one GolfpackError (UsageError, DataError) here, before a model is built."""
    if world_size <= 0 or MICROBATCH_DIVISOR % world_size:
        raise UsageError(
            f"world size {world_size} does not divide {MICROBATCH_DIVISOR}: the global batch is split into "
            f"{MICROBATCH_DIVISOR} micro-batches, so use --nproc_per_node 1, 2, 4 or 8"
        )
    accum = MICROBATCH_DIVISOR // world_size
    per_micro = cfg.train_batch_tokens // MICROBATCH_DIVISOR
    if cfg.train_batch_tokens % (MICROBATCH_DIVISOR * cfg.train_seq_len):
        unit = MICROBATCH_DIVISOR * cfg.train_seq_len
        raise UsageError(
            f"train_batch_tokens {cfg.train_batch_tokens} is not divisible into sequences: it must be a multiple of "
            f"{MICROBATCH_DIVISOR} micro-batches x train_seq_len {cfg.train_seq_len} = "
            f"{unit} (e.g. {max(1, round(cfg.train_batch_tokens / unit)) * unit})",
            param="train_batch_tokens",
        )
    files = check_train_shards(cfg.train_files, cfg.vocab_size, cfg.val_files)

    if cfg.tokenizer_path:
        tok = Path(cfg.tokenizer_path)
        sp = load_sentencepiece(tok)  # DataError if missing or not a model
        if int(sp.vocab_size()) != cfg.vocab_size:
            raise DataError(
                f"tokenizer {tok} has vocab {int(sp.vocab_size())} but the model's vocab_size is {cfg.vocab_size}: "
                "use the tokenizer the shards were made with and set vocab_size to its size"
            )

    val_tokens = None
    if cfg.val_files:
        if not cfg.tokenizer_path:
            raise UsageError("validation needs tokenizer_path (val_bpb counts bytes with the tokenizer)", param="tokenizer_path")
        if val_batch_seqs(cfg, world_size) < 1:
            need = MICROBATCH_DIVISOR * cfg.train_seq_len
            raise UsageError(
                f"val_batch_tokens {cfg.val_batch_tokens} gives each rank less than one sequence per forward: it is split "
                f"into {MICROBATCH_DIVISOR} (world_size x grad_accum_steps) parts, so set it to at least "
                f"{MICROBATCH_DIVISOR} x train_seq_len {cfg.train_seq_len} = {need}",
                param="val_batch_tokens",
            )
        from golfpack.formats.shards import load_tokens

        val_tokens = load_tokens(cfg.val_files, cfg.val_max_tokens or None)
        usable = ((val_tokens.size - 1) // cfg.train_seq_len) * cfg.train_seq_len
        if usable <= 0:
            raise DataError(f"val shards {cfg.val_files!r} hold {val_tokens.size} tokens: fewer than one sequence of {cfg.train_seq_len}")
        if int(val_tokens.max()) >= cfg.vocab_size:
            raise DataError(f"val shards have token id {int(val_tokens.max())} >= vocab_size {cfg.vocab_size}: wrong tokenizer")
        val_tokens = np.asarray(val_tokens[: usable + 1])

    policy = None
    if cfg.qat_policy:
        from golfpack.packer.policy import resolve_policy

        policy = resolve_policy(cfg.qat_policy)
    return _Plan(accum, per_micro, files, val_tokens, policy)


# ---------------------------------------------------------------------------------------------
# validation


class _Validator:
    """Challenge-style (non-overlapping) val_loss / val_bpb, each rank scoring its share of sequences."""

    def __init__(self, cfg: TrainConfig, tokens: np.ndarray, dist_: DistContext) -> None:
        self.cfg, self.dist = cfg, dist_
        seq = cfg.train_seq_len
        nseq = (tokens.size - 1) // seq
        lo, hi = nseq * dist_.rank // dist_.world_size, nseq * (dist_.rank + 1) // dist_.world_size
        self.tokens = tokens[lo * seq : hi * seq + 1]
        self.batch_seqs = val_batch_seqs(cfg, dist_.world_size)
        self.luts = build_luts(cfg.tokenizer_path, cfg.vocab_size)

    def __call__(self, model: GPT) -> tuple[float, float]:
        model.eval()
        with torch.no_grad(), _autocast(self.cfg, self.dist.device):
            nll, ntok, nbytes = _score(model, self.tokens, self.luts, self.cfg.train_seq_len, self.batch_seqs, self.dist.device)
        model.train()
        sums = torch.tensor([nll, ntok, nbytes], dtype=torch.float64, device=self.dist.device)
        if self.dist.enabled:
            dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        nll, ntok, nbytes = (float(v) for v in sums.tolist())
        val_loss = nll / max(ntok, 1.0)
        return val_loss, nll / math.log(2.0) / max(nbytes, 1.0)


def _score(model: GPT, tokens: np.ndarray, luts: Any, seq_len: int, batch_seqs: int, device: torch.device) -> tuple[float, float, float]:
    """(sum of nll in nats, target tokens, target bytes) over this rank's share, via the one evaluator."""
    if tokens.size <= 1:
        return 0.0, 0.0, 0.0
    r = evaluate(model, torch.from_numpy(tokens.astype(np.int64)), luts, seq_len=seq_len, stride=seq_len,
                 batch_size=batch_seqs, device=device)
    return r.val_loss * r.tokens, float(r.tokens), float(r.bytes)


# ---------------------------------------------------------------------------------------------
# helpers


def _autocast(cfg: TrainConfig, device: torch.device):
    if device.type == "cuda" and cfg.bf16:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def git_revision() -> str | None:
    """The golfpack source tree's commit (with '-dirty' when it has local changes), None outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=10)
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Logger:
    """Rank 0 prints each line and appends it to train.log (a log grows line by line by design)."""

    def __init__(self, path: Path | None, echo: Callable[[str], None] | None) -> None:
        self.path, self.echo = path, echo
        self.fh = open(path, "w", encoding="utf-8") if path is not None else None

    def __call__(self, line: str) -> None:
        if self.echo is not None:
            self.echo(line)
        if self.fh is not None:
            self.fh.write(line + "\n")
            self.fh.flush()

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


# ---------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig, *, echo: Callable[[str], None] | None = print, progress: bool | None = False) -> TrainResult:
    """Run one training job (call once per process; under torchrun every rank calls it)."""
    t_start = time.perf_counter()
    rank, world_size, local_rank = dist_ctx.world_from_env()
    plan = check_config(cfg, world_size)  # raises before any compute
    device = _pick_device(cfg, local_rank)
    out_dir = Path(cfg.out_dir)
    if rank == 0:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"cannot create out_dir {out_dir}: {e}", param="out_dir") from None

    d = dist_ctx.init(device)  # joins the torchrun process group (gloo on CPU, nccl on CUDA) when there is one
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    log = _Logger(out_dir / LOG_NAME if d.is_main else None, echo if d.is_main else None)
    try:
        return _run(cfg, plan, d, log, out_dir, t_start, progress)
    finally:
        log.close()
        dist_ctx.finish(d)


def _run(cfg: TrainConfig, plan: _Plan, d: DistContext, log: _Logger, out_dir: Path, t_start: float, progress: bool | None) -> TrainResult:
    device, cuda = d.device, d.device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    # Header lines print in the baseline's exact formats and order (so its log parsers work on our logs);
    # what only golfpack has goes on separate `golfpack_*:` lines.
    validator = _Validator(cfg, plan.val_tokens, d) if plan.val_tokens is not None else None
    if validator is not None:
        log(f"val_bpb:enabled tokenizer_kind=sentencepiece tokenizer_path={cfg.tokenizer_path}")
    else:
        log("golfpack_val:disabled (val_files is empty: no val_loss/val_bpb lines)")
    log(f"train_loader:dataset:{plan.train_files[0].parent.name} train_shards:{len(plan.train_files)}")
    if validator is not None:
        log(f"val_loader:shards pattern={cfg.val_files} tokens:{plan.val_tokens.size - 1}")
    _seed_all(cfg.seed)
    mcfg = cfg.model_config()
    model = GPT(mcfg).to(device)
    if cuda and cfg.bf16:
        # The baseline stores tok_emb in bf16 on GPU; linear weights and control tensors stay fp32.
        model.tok_emb.to(torch.bfloat16)
    if d.enabled:  # identical seeds already give identical inits; broadcasting makes it a guarantee
        with torch.no_grad():
            for p in model.state_dict().values():
                dist.broadcast(p, src=0)

    use_compile = cfg.compile == "on" or (cfg.compile == "auto" and cuda)
    qat = None
    if plan.qat_policy is not None:
        from golfpack.trainer.qat import QATModel

        qat = QATModel(model, plan.qat_policy)
    train_module: torch.nn.Module = qat if qat is not None else model
    forward = torch.compile(train_module, dynamic=False, fullgraph=True) if use_compile else train_module
    ns_fn = torch.compile(newton_schulz) if use_compile else None
    opts = build_optimizers(model, cfg, fused=cuda, ns_dtype=torch.bfloat16 if cuda else torch.float32, ns_fn=ns_fn)
    params = [p for p in model.parameters()]

    accum = plan.grad_accum_steps
    untied = model.lm_head is not None
    log(f"model_params:{sum(p.numel() for p in model.parameters())}")
    log(f"world_size:{d.world_size} grad_accum_steps:{accum}")
    # golfpack leaves torch's SDPA backend choice alone: report what is actually enabled.
    log(f"sdp_backends:cudnn={torch.backends.cuda.cudnn_sdp_enabled()} flash={torch.backends.cuda.flash_sdp_enabled()} "
        f"mem_efficient={torch.backends.cuda.mem_efficient_sdp_enabled()} math={torch.backends.cuda.math_sdp_enabled()}")
    log(f"attention_mode:{'gqa' if mcfg.num_kv_heads != mcfg.num_heads else 'mha'} num_heads:{mcfg.num_heads} "
        f"num_kv_heads:{mcfg.num_kv_heads}")
    log(f"tie_embeddings:{mcfg.tie_embeddings} embed_lr:{cfg.embed_lr if untied else cfg.tied_embed_lr} "
        f"head_lr:{cfg.head_lr if untied else 0.0} matrix_lr:{cfg.matrix_lr} scalar_lr:{cfg.scalar_lr}")
    log(f"train_batch_tokens:{cfg.train_batch_tokens} train_seq_len:{cfg.train_seq_len} iterations:{cfg.iterations} "
        f"warmup_steps:{cfg.warmup_steps} max_wallclock_seconds:{cfg.max_wallclock_seconds:.3f}")
    log(f"seed:{cfg.seed}")
    log(f"golfpack_model:layers:{mcfg.num_layers} dim:{mcfg.model_dim} mlp_hidden:{mcfg.mlp_hidden} "
        f"vocab:{mcfg.vocab_size} activation:{mcfg.activation}")
    log(f"golfpack_runtime:device:{device.type} compile:{use_compile} bf16:{cuda and cfg.bf16} threads:{torch.get_num_threads()}")
    log(f"golfpack_schedule:warmdown_iters:{cfg.warmdown_iters} muon_momentum:{cfg.muon_momentum} "
        f"qat_policy:{cfg.qat_policy or 'off'} ema_decay:{cfg.ema_decay} val_batch_tokens:{cfg.val_batch_tokens}")

    def new_loader() -> DistributedTokenLoader:
        return DistributedTokenLoader(plan.train_files, d.rank, d.world_size, device, cfg.vocab_size)

    def zero_grad() -> None:
        for opt in opts:
            opt.zero_grad(set_to_none=True)

    def train_step(loader: DistributedTokenLoader) -> Tensor:
        """Forward/backward over this rank's micro-batches, average grads over ranks; returns the global mean loss.

        The loss stays a device tensor: reading it would sync the GPU every step (only log steps do)."""
        zero_grad()
        loss_sum = torch.zeros((), device=device, dtype=torch.float32)
        for _ in range(accum):
            x, y = loader.next_batch(plan.local_tokens, cfg.train_seq_len)
            with _autocast(cfg, device):
                loss = forward(x, y)
            loss_sum += loss.detach().float()
            (loss / accum).backward()
        mean_loss = loss_sum / accum
        if d.enabled:
            # One all-reduce for all gradients plus the loss: same average as DDP, and QAT's functional
            # forward needs no DDP hooks.
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            flat = torch.cat([g.reshape(-1).float() for g in grads] + [mean_loss.reshape(1)])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= d.world_size
            off = 0
            for p, g in zip(params, grads):
                n = g.numel()
                p.grad = flat[off : off + n].view_as(g).to(g.dtype)
                off += n
            mean_loss = flat[-1]
        if cfg.grad_clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
        for opt in opts:
            opt.step()
        zero_grad()
        return mean_loss.detach()

    # Warmup: real steps that compile/allocate, then everything is put back as it was.
    if cfg.warmup_steps > 0:
        init_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        init_opts = [copy.deepcopy(opt.state_dict()) for opt in opts]
        loader = new_loader()
        for i in range(cfg.warmup_steps):
            set_schedule(opts, 1.0, muon_momentum_at(cfg, 0))
            if qat is not None and i == cfg.warmup_steps - 1:
                qat.active = True  # prime the QAT refresh path too (the graph itself does not change)
                qat.refresh()
            train_step(loader)
            if cfg.warmup_steps <= 20 or (i + 1) % 10 == 0 or i + 1 == cfg.warmup_steps:
                log(f"warmup_step:{i + 1}/{cfg.warmup_steps}")
        model.load_state_dict(init_model, strict=True)
        for opt, st in zip(opts, init_opts):
            opt.load_state_dict(st)
        if qat is not None:
            qat.disable()
        zero_grad()

    ema: dict[str, Tensor] | None = None
    if cfg.ema_decay > 0:
        ema = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
        # state_dict tensors share storage with the live weights, which are only ever updated in place,
        # so these two lists stay valid for the whole run and each update is two fused foreach kernels.
        ema_list = list(ema.values())
        live_list = list(model.state_dict().values())

    def eval_weights() -> contextlib.AbstractContextManager:
        """Validate the EMA weights when EMA is on (swapped in, then the live weights restored)."""
        if ema is None:
            return contextlib.nullcontext()

        @contextlib.contextmanager
        def swap():
            live = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict({k: ema[k].to(live[k].dtype) for k in live}, strict=True)
            try:
                yield
            finally:
                model.load_state_dict(live, strict=True)

        return swap()

    loader = new_loader()
    cap_ms = 1000.0 * cfg.max_wallclock_seconds if cfg.max_wallclock_seconds > 0 else None
    qat_step_at = math.ceil(cfg.qat_start_frac * cfg.iterations) if cfg.qat_start_frac < 1 else None
    qat_time_at = cfg.qat_start_time_frac * cap_ms if (cap_ms is not None and cfg.qat_start_time_frac < 1) else None
    qat_start_step: int | None = None
    loss_buf = torch.zeros(cfg.iterations, device=device, dtype=torch.float32)  # per-step loss, read at the end
    val_history: list[dict[str, float]] = []
    train_time_ms = 0.0
    stop_after: int | None = None
    step = 0
    bar = progress_bar(total=cfg.iterations, desc="train", unit="step", enabled=progress if d.is_main else False)
    _sync(device)
    t0 = time.perf_counter()
    while True:
        last = step == cfg.iterations or (stop_after is not None and step >= stop_after)
        validate = validator is not None and (last or (cfg.val_loss_every > 0 and step % cfg.val_loss_every == 0))
        if validate or last:  # close the timed segment: validation time never counts as training time
            _sync(device)
            train_time_ms += 1000.0 * (time.perf_counter() - t0)
        if validate:
            with eval_weights():
                vl, vb = validator(model)
            val_history.append({"step": step, "val_loss": vl, "val_bpb": vb})
            log(f"step:{step}/{cfg.iterations} val_loss:{vl:.4f} val_bpb:{vb:.4f} "
                f"train_time:{train_time_ms:.0f}ms step_avg:{train_time_ms / max(step, 1):.2f}ms")
            _sync(device)
            t0 = time.perf_counter()
        if last:
            if stop_after is not None and step < cfg.iterations:
                log(f"stopping_early: wallclock_cap train_time:{train_time_ms:.0f}ms step:{step}/{cfg.iterations}")
            break

        elapsed_ms = train_time_ms + 1000.0 * (time.perf_counter() - t0)
        set_schedule(opts, lr_multiplier(cfg, step, elapsed_ms), muon_momentum_at(cfg, step))
        if qat is not None and qat_start_step is None and qat_step_at is not None and step >= qat_step_at:
            qat_start_step = step
            qat.enable()
            log(f"qat_enabled: step:{step} train_time:{elapsed_ms:.0f}ms policy:{qat.policy_name} tensors:{len(qat.specs)}")
        elif qat is not None:
            qat.refresh()
        loss_buf[step] = train_step(loader)
        step += 1
        if ema is not None:
            with torch.no_grad():
                live = [v if v.dtype == torch.float32 else v.float() for v in live_list]  # bf16 tok_emb on CUDA
                torch._foreach_mul_(ema_list, cfg.ema_decay)
                torch._foreach_add_(ema_list, live, alpha=1.0 - cfg.ema_decay)
        approx_ms = train_time_ms + 1000.0 * (time.perf_counter() - t0)
        bar.update(1)
        if cfg.train_log_every > 0 and (step <= 10 or step % cfg.train_log_every == 0 or stop_after is not None):
            log(f"step:{step}/{cfg.iterations} train_loss:{loss_buf[step - 1].item():.4f} train_time:{approx_ms:.0f}ms step_avg:{approx_ms / step:.2f}ms")

        # Wallclock decisions (cap, time-based QAT) must agree across ranks: take the max of each flag.
        reached_cap = cap_ms is not None and approx_ms >= cap_ms
        qat_time = qat is not None and qat_start_step is None and qat_time_at is not None and approx_ms >= qat_time_at
        if d.enabled and (cap_ms is not None):
            flags = torch.tensor([int(reached_cap), int(qat_time)], device=device)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            reached_cap, qat_time = bool(flags[0].item()), bool(flags[1].item())
        if qat_time and qat is not None and qat_start_step is None:
            qat_start_step = step
            qat.enable()
            log(f"qat_enabled: step:{step} train_time:{approx_ms:.0f}ms policy:{qat.policy_name} tensors:{len(qat.specs)} (time trigger)")
        if stop_after is None and reached_cap:
            stop_after = step
    bar.close()

    if cuda:
        log(f"peak memory allocated: {torch.cuda.max_memory_allocated() // 1024 // 1024} MiB "
            f"reserved: {torch.cuda.max_memory_reserved() // 1024 // 1024} MiB")

    result = TrainResult(
        out_dir=out_dir,
        steps=step,
        tokens=step * cfg.train_batch_tokens,
        train_time_ms=train_time_ms,
        wallclock_s=time.perf_counter() - t_start,
        stopped_early=stop_after is not None and step < cfg.iterations,
        qat_start_step=qat_start_step,
        train_losses=list(enumerate(loss_buf[:step].tolist(), start=1)),
        val_history=val_history,
    )
    if d.is_main:
        sd = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if ema is not None:
            sd = {k: ema[k].cpu().to(sd[k].dtype) for k in sd}
        ckpt = out_dir / CHECKPOINT_NAME
        with atomic_write(ckpt) as f:
            torch.save(sd, f)
        meta = out_dir / METADATA_NAME
        with atomic_write(meta, "w") as f:
            json.dump(_metadata(cfg, mcfg, result, d, plan), f, indent=2)
            f.write("\n")
        log(f"Serialized model: {ckpt.stat().st_size} bytes")
        log(f"golfpack_checkpoint:{ckpt} metadata:{meta}")
        result.checkpoint, result.metadata, result.log_path = ckpt, meta, out_dir / LOG_NAME
    if d.enabled:
        dist.barrier()
    return result


def _metadata(cfg: TrainConfig, mcfg: ModelConfig, r: TrainResult, d: DistContext, plan: _Plan) -> dict[str, Any]:
    return {
        "format": METADATA_FORMAT,
        "model_config": mcfg.to_dict(),
        "training": {
            "steps": r.steps,
            "tokens": r.tokens,
            "train_time_ms": round(r.train_time_ms, 1),
            "wallclock_seconds": round(r.wallclock_s, 3),
            "stopped_early": r.stopped_early,
            "seed": cfg.seed,
            "world_size": d.world_size,
            "grad_accum_steps": plan.grad_accum_steps,
            "device": d.device.type,
            "qat_policy": cfg.qat_policy or None,
            "qat_start_step": r.qat_start_step,
            "ema_decay": cfg.ema_decay,
            "final_val_loss": r.final_val["val_loss"] if r.final_val else None,
            "final_val_bpb": r.final_val["val_bpb"] if r.final_val else None,
            "last_train_loss": r.train_losses[-1][1] if r.train_losses else None,
            "git_revision": git_revision(),
            "torch_version": torch.__version__,
            "finished_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
        "train_config": cfg.to_dict(),
    }


__all__ = ["CHECKPOINT_NAME", "LOG_NAME", "METADATA_NAME", "TrainResult", "check_config", "git_revision", "train", "val_batch_seqs"]
