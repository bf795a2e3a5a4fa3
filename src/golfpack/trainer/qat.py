"""Quantization-aware training: the forward sees the weights `pack` would store, gradients pass straight through.

w_eff = w + delta, with delta = fake_quantize(w) - w recomputed (no autograd) once per optimizer step
and held in a BUFFER. That is exactly the straight-through estimator w + (fq(w) - w).detach(), but
the switch is data, not code: before QAT starts delta is all zeros (w + 0 == w bit for bit), after it
delta holds the quantization error. The compiled graph is the same before and after, so
torch.compile can neither constant-fold the switch away (the failure seen in challenge records where
a Python/class flag captured at trace time kept QAT dead) nor need a recompile when it flips.
The quantizer and policy are the packer's own (`golfpack.packer.quantize.fake_quantize`,
`golfpack.packer.policy`), so training sees the same rounding, clipping and fp16 scales as the artifact.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from golfpack.model import GPT


def _buffer_name(param_name: str) -> str:
    return "qat_delta__" + param_name.replace(".", "__")


class QATModel(nn.Module):
    """Wraps a GPT; `forward(x, y)` = the GPT's loss with fake-quantized weights once `enable()`d."""

    def __init__(self, model: GPT, policy) -> None:  # policy: golfpack.packer.policy.Policy
        super().__init__()
        self.base = model
        params = dict(model.named_parameters())
        specs = policy.resolve({n: p.detach() for n, p in params.items()})
        # fp32 / exact passthrough store the value unchanged: nothing to simulate. `+gptq` levels need a
        # Hessian from the final weights, so training simulates the same grid with plain rounding.
        self.specs = {n: s.rounded() for n, s in specs.items() if not (s.kind == "passthrough" and s.dtype in ("fp32", "exact"))}
        self.policy_name = policy.name
        for n in self.specs:
            self.register_buffer(_buffer_name(n), torch.zeros_like(params[n], requires_grad=False), persistent=False)
        self.active = False  # read only by refresh(), never by forward(): see the module docstring

    def enable(self) -> None:
        self.active = True
        self.refresh()

    @torch.no_grad()
    def disable(self) -> None:
        """Back to the plain forward (deltas zeroed), e.g. after compile-priming warmup steps."""
        self.active = False
        for n in self.specs:
            getattr(self, _buffer_name(n)).zero_()

    @torch.no_grad()
    def refresh(self) -> None:
        """Recompute delta = fake_quantize(w) - w for the current weights (call after every optimizer step)."""
        if not self.active:
            return
        from golfpack.packer.quantize import fake_quantize

        params = dict(self.base.named_parameters())
        for n, spec in self.specs.items():
            w = params[n].detach()
            getattr(self, _buffer_name(n)).copy_(fake_quantize(w.float(), spec).to(w.dtype) - w)

    def effective_params(self) -> dict[str, Tensor]:
        params = dict(self.base.named_parameters())
        return {n: params[n] + getattr(self, _buffer_name(n)) for n in self.specs}

    def forward(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        return functional_call(self.base, self.effective_params(), (input_ids, target_ids), strict=False)


def build_qat(model: GPT, policy_name_or_path: str) -> QATModel:
    from golfpack.packer.policy import resolve_policy

    return QATModel(model, resolve_policy(policy_name_or_path))


__all__ = ["QATModel", "build_qat"]
