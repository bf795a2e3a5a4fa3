"""Optimizers of the baseline recipe: Muon for block matrices, Adam for embeddings and scalars.

Muon = SGD momentum (nesterov) whose update is replaced by its nearest semi-orthogonal matrix,
found with a quintic Newton-Schulz iteration. Under torch.distributed each rank orthogonalises a
strided share of the matrices and one all-reduce of the flat update gives every rank all of them,
so the NS cost is split across GPUs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import Tensor

from golfpack.model import CONTROL_TENSOR_NAME_PATTERNS, GPT
from golfpack.trainer.config import TrainConfig

# Quintic coefficients that push all singular values towards ~1 within 5 steps (Keller Jordan's Muon).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: Tensor, steps: int = 5, eps: float = 1e-7, dtype: torch.dtype = torch.bfloat16) -> Tensor:
    """Approximately orthogonalise a 2-D matrix (U S V^T -> U V^T), computed in `dtype`."""
    a, b, c = NS_COEFFS
    x = g.to(dtype)
    x = x / (x.norm() + eps)
    tall = g.size(0) > g.size(1)
    if tall:  # iterate on the wide orientation: X X^T is then the smaller Gram matrix
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class Muon(torch.optim.Optimizer):
    """Momentum + Newton-Schulz orthogonalised updates for 2-D parameters.

    Group keys: lr, momentum, backend_steps, nesterov. `ns_dtype` is bf16 as the baseline on CUDA;
    the trainer passes fp32 on CPU, where bf16 matmuls are slow and buy nothing.
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float,
        backend_steps: int = 5,
        nesterov: bool = True,
        ns_dtype: torch.dtype = torch.bfloat16,
        ns_fn: Callable[..., Tensor] | None = None,
    ) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, backend_steps=backend_steps, nesterov=nesterov))
        self.ns_dtype = ns_dtype
        self.ns_fn = ns_fn or newton_schulz

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        distributed = dist.is_available() and dist.is_initialized()
        world = dist.get_world_size() if distributed else 1
        rank = dist.get_rank() if distributed else 0
        for group in self.param_groups:
            params: list[Tensor] = group["params"]
            if not params:
                continue
            total = sum(p.numel() for p in params)
            flat = torch.zeros(total, device=params[0].device, dtype=self.ns_dtype)
            offset = 0
            for i, p in enumerate(params):
                if i % world == rank and p.grad is not None:
                    g = p.grad
                    state = self.state[p]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.zeros_like(g)
                    buf = state["momentum_buffer"]
                    buf.mul_(group["momentum"]).add_(g)
                    if group["nesterov"]:
                        g = g.add(buf, alpha=group["momentum"])
                    u = self.ns_fn(g, steps=group["backend_steps"], dtype=self.ns_dtype)
                    # Scale so tall matrices get updates of the same RMS as square ones.
                    u = u * max(1.0, g.size(0) / g.size(1)) ** 0.5
                    flat[offset : offset + p.numel()] = u.reshape(-1)
                offset += p.numel()
            if distributed and world > 1:
                dist.all_reduce(flat, op=dist.ReduceOp.SUM)  # each slot is non-zero on exactly one rank
            offset = 0
            for p in params:
                p.add_(flat[offset : offset + p.numel()].view_as(p).to(p.dtype), alpha=-group["lr"])
                offset += p.numel()
        return None


def is_control(name: str) -> bool:
    return any(pat in name for pat in CONTROL_TENSOR_NAME_PATTERNS)


def split_params(model: GPT) -> dict[str, list[Tensor]]:
    """The baseline's parameter groups: Muon matrices, Adam scalars/controls, token embedding, untied head."""
    matrices, scalars = [], []
    for name, p in model.blocks.named_parameters():
        (matrices if p.ndim == 2 and not is_control(name) else scalars).append(p)
    if model.skip_weights is not None and model.skip_weights.numel() > 0:
        scalars.append(model.skip_weights)
    groups = {"matrix": matrices, "scalar": scalars, "embed": [model.tok_emb.weight], "head": []}
    if model.lm_head is not None:
        groups["head"] = [model.lm_head.weight]
    return groups


def build_optimizers(model: GPT, cfg: TrainConfig, *, fused: bool = False, ns_dtype: torch.dtype = torch.bfloat16,
                     ns_fn: Callable[..., Tensor] | None = None) -> list[torch.optim.Optimizer]:
    """[Adam(tok_emb), Muon(matrices), Adam(scalars), (Adam(lm_head))]; each group carries `base_lr`."""
    groups = split_params(model)
    covered = {id(p) for ps in groups.values() for p in ps}
    missing = [n for n, p in model.named_parameters() if id(p) not in covered]
    assert not missing, f"parameters without an optimizer: {missing}"
    adam_kw = dict(betas=(cfg.beta1, cfg.beta2), eps=cfg.adam_eps)
    if fused:
        adam_kw["fused"] = True
    token_lr = cfg.tied_embed_lr if cfg.tie_embeddings else cfg.embed_lr
    opts: list[torch.optim.Optimizer] = [
        torch.optim.Adam([{"params": groups["embed"], "lr": token_lr, "base_lr": token_lr}], **adam_kw),
        Muon(groups["matrix"], lr=cfg.matrix_lr, momentum=cfg.muon_momentum, backend_steps=cfg.muon_backend_steps,
             ns_dtype=ns_dtype, ns_fn=ns_fn),
        torch.optim.Adam([{"params": groups["scalar"], "lr": cfg.scalar_lr, "base_lr": cfg.scalar_lr}], **adam_kw),
    ]
    for g in opts[1].param_groups:
        g["base_lr"] = cfg.matrix_lr
    if groups["head"]:
        opts.append(torch.optim.Adam([{"params": groups["head"], "lr": cfg.head_lr, "base_lr": cfg.head_lr}], **adam_kw))
    return opts


def lr_multiplier(cfg: TrainConfig, step: int, elapsed_ms: float) -> float:
    """Warmdown schedule: 1.0, then linear to 0.

    By iterations: over the last `warmdown_iters` steps. With a wallclock cap: once the remaining
    time is less than `warmdown_iters` steps at the average step time so far, lr = remaining / that.
    """
    if cfg.warmdown_iters <= 0:
        return 1.0
    if cfg.max_wallclock_seconds <= 0:
        start = max(cfg.iterations - cfg.warmdown_iters, 0)
        if start <= step < cfg.iterations:
            return max((cfg.iterations - step) / max(cfg.warmdown_iters, 1), 0.0)
        return 1.0
    step_ms = elapsed_ms / max(step, 1)
    warmdown_ms = cfg.warmdown_iters * step_ms
    remaining_ms = max(1000.0 * cfg.max_wallclock_seconds - elapsed_ms, 0.0)
    return remaining_ms / max(warmdown_ms, 1e-9) if remaining_ms <= warmdown_ms else 1.0


def muon_momentum_at(cfg: TrainConfig, step: int) -> float:
    if cfg.muon_momentum_warmup_steps <= 0:
        return cfg.muon_momentum
    frac = min(step / cfg.muon_momentum_warmup_steps, 1.0)
    return (1 - frac) * cfg.muon_momentum_warmup_start + frac * cfg.muon_momentum


def set_schedule(opts: list[torch.optim.Optimizer], lr_mul: float, momentum: float) -> None:
    for opt in opts:
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * lr_mul
            if isinstance(opt, Muon):
                g["momentum"] = momentum


__all__ = [
    "Muon",
    "NS_COEFFS",
    "build_optimizers",
    "is_control",
    "lr_multiplier",
    "muon_momentum_at",
    "newton_schulz",
    "set_schedule",
    "split_params",
]
