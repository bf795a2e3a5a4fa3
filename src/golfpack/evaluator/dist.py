"""torchrun helpers: one process per rank, windows split over ranks, sums all-reduced. The trainer
uses the same context (the one definition of "where this process sits in a torchrun job").

`torchrun --nproc_per_node=N -m golfpack.evaluator ...` sets RANK/WORLD_SIZE/LOCAL_RANK; we join
a process group (gloo on CPU, nccl on CUDA) only then, so a plain `golfpack eval` never touches
torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from golfpack.errors import UsageError


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in a torchrun job (world_size 1 outside torchrun)."""

    rank: int = 0  # global rank
    world_size: int = 1  # number of processes
    device: torch.device = torch.device("cpu")  # this rank's device (cuda:LOCAL_RANK on GPUs)
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise UsageError(f"environment variable {name}={raw!r} is not an integer") from None


def world_from_env() -> tuple[int, int, int]:
    """(RANK, WORLD_SIZE, LOCAL_RANK) as torchrun sets them; (0, 1, 0) outside torchrun."""
    return _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """'cpu' | 'cuda' | 'cuda:N' -> torch.device; a clear error if CUDA was asked for and is absent."""
    try:
        dev = torch.device(device) if not isinstance(device, torch.device) else device
    except RuntimeError:  # torch's own message lists twenty device types we do not run on
        raise UsageError(f"device must be cpu or cuda, got {device!r}", param="device") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError("device 'cuda' requested but no CUDA device is available; use device='cpu'", param="device")
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    elif dev.type != "cpu":
        raise UsageError(f"device must be cpu or cuda, got {device!r}", param="device")
    return dev


def init(device: str | torch.device = "cpu") -> DistContext:
    """Join the torchrun process group if launched by torchrun, else a single-process context."""
    rank, world, local_rank = world_from_env()
    dev = resolve_device(device, local_rank)
    if world <= 1:
        return DistContext(0, 1, dev, False)
    owns = False
    if not tdist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        cuda = dev.type == "cuda"
        tdist.init_process_group(backend="nccl" if cuda else "gloo", device_id=dev if cuda else None)
        owns = True
    return DistContext(rank, world, dev, owns)


def all_reduce_sum(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Sum a float64 tensor over ranks (no-op for one process). nccl needs it on the rank's GPU."""
    if not ctx.enabled:
        return values
    buf = values.to(ctx.device if ctx.device.type == "cuda" else "cpu")
    tdist.all_reduce(buf, op=tdist.ReduceOp.SUM)
    return buf.cpu()


def finish(ctx: DistContext) -> None:
    if ctx.owns_group and tdist.is_initialized():
        tdist.destroy_process_group()


__all__ = ["DistContext", "all_reduce_sum", "finish", "init", "resolve_device", "world_from_env"]
