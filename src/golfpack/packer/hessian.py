"""What GPTQ needs: the input second moment H = 2/n X^T X of every linear weight, on calibration tokens.

A weight W used as y = x @ W.T sees inputs x; GPTQ trades rounding error between W's columns through
H. Every block matrix is a `CastedLinear` (its input is hooked); the tied embedding doubles as the
output head, whose input is the final-normed hidden state (hooked at `final_norm`). Sums run in
float64 on the CPU; the forward itself is fp32, so H is bit-for-bit repeatable for the same tokens,
micro-batch size, thread count and device (what `pack` uses to replay a search), and otherwise equal
to ~1e-6 relative.

`GptqCalibration` (packer/calibration.py) pins WHICH tokens: a policy that uses `+gptq` specs carries one, so `golfpack pack
--policy FILE` rebuilds the same Hessians (checked by digest) and replays the search's artifact.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from golfpack.errors import UsageError

# the calibration record lives with the token sources; `pack` and `policy` reach it through here too
from golfpack.packer.calibration import GptqCalibration, calibration_batch


def weight_inputs(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """weight name -> the module whose forward INPUT (pre-hook) or OUTPUT (final_norm) feeds it."""
    from golfpack.model import CastedLinear

    out: dict[str, torch.nn.Module] = {}
    for path, m in model.named_modules():
        if isinstance(m, CastedLinear):
            out[f"{path}.weight"] = m
    if getattr(model, "lm_head", None) is None and hasattr(model, "final_norm"):
        out["tok_emb.weight"] = model.final_norm  # tied head: logits = final_norm(x) @ tok_emb.weight.T
    return out


@torch.no_grad()
def collect_hessians(model: torch.nn.Module, batch: Any, names: Iterable[str] | None = None, *,
                     device: str = "cpu", micro: int = 8) -> dict[str, Tensor]:
    """H = 2/n X^T X (float64, CPU) for each requested linear weight over every token of `batch`.

    Weights fed by the same tensor (c_q, c_k and c_v all read the normed block input) share one
    X^T X per forward instead of computing it three times."""
    feeds = weight_inputs(model)
    want = list(feeds) if names is None else [n for n in names if n in feeds]
    acc: dict[str, Tensor] = {}
    count: dict[str, int] = {}
    last: list[Any] = [None, None]  # (input tensor, its Gram): hooks of one input fire back to back

    def add(name: str, x: Tensor) -> None:
        if last[0] is not x:
            x2 = x.detach().reshape(-1, x.shape[-1]).to("cpu", torch.float64)
            last[0], last[1] = x, (x2.T @ x2, x2.shape[0])
        gram, n = last[1]
        if name in acc:
            acc[name] += gram
        else:
            acc[name] = gram.clone()
        count[name] = count.get(name, 0) + n

    hooks = []
    for name in want:
        m = feeds[name]
        if name == "tok_emb.weight" and m is getattr(model, "final_norm", None):
            hooks.append(m.register_forward_hook(lambda mod, args, out, n=name: add(n, out)))
        else:
            hooks.append(m.register_forward_pre_hook(lambda mod, args, n=name: add(n, args[0])))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, batch.inputs.shape[0], micro):
            model.logits(batch.inputs[i : i + micro].to(device))  # type: ignore[operator]
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {n: (2.0 / max(1, count[n])) * acc[n] for n in want if n in acc}


def hessians_for(state_dict: dict[str, Tensor], config: Any, names: Iterable[str], cal: GptqCalibration, *,
                 tokenizer: str | None = None, source: str | None = None, device: str = "cpu") -> tuple[dict[str, Tensor], GptqCalibration]:
    """Hessians of the named tensors that are linear weights of the model (GPTQ has no meaning for the
    others: they keep round-to-nearest), and the calibration (digest filled in) they came from."""
    from dataclasses import replace

    from golfpack.model import build_model

    names = list(names)
    if not names:
        return {}, cal
    if config is None:
        raise UsageError("GPTQ specs need the model itself (calibration forwards), but this checkpoint has no baseline-family config", param="config")
    batch = calibration_batch(cal, tokenizer=tokenizer, vocab_size=config.vocab_size, source=source)
    model = build_model(config, state_dict, device=device)
    return collect_hessians(model, batch, names, device=device), replace(cal, digest=batch.digest)


__all__ = ["GptqCalibration", "calibration_batch", "collect_hessians", "hessians_for", "weight_inputs"]  # the first two: re-exported
