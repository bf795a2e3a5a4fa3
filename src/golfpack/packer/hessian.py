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


def weight_inputs(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str]]:
    """weight name -> (module, "input" | "output"): the module whose forward input (pre-hook) or output
    feeds that weight.

    Found, not hard-coded: every nn.Linear (subclasses such as CastedLinear included) whose `weight` is a
    state-dict tensor, matched by parameter identity to its state-dict name (a shared block reused in a
    loop is one module: its hook fires on every call), plus the layers the adapter names (`extra_inputs`:
    e.g. a tied head computed with F.linear(x, tok_emb.weight), fed by the final norm's output)."""
    from golfpack.adapters import extra_inputs, state_module

    root = state_module(model)
    name_of = {id(t): n for n, t in root.state_dict(keep_vars=True).items()}
    out: dict[str, tuple[torch.nn.Module, str]] = {}
    for _, m in root.named_modules():
        if isinstance(m, torch.nn.Linear):
            name = name_of.get(id(m.weight))
            if name is not None:
                out.setdefault(name, (m, "input"))
    mods = dict(root.named_modules())
    for name, path in extra_inputs(model).items():
        if name in name_of.values() and path in mods:
            out[name] = (mods[path], "output")
    return out


def _baseline_weight_inputs(model: torch.nn.Module) -> dict[str, tuple[torch.nn.Module, str]]:
    """The pre-adapter, hard-coded discovery for the baseline GPT (kept for the equality test and the bench)."""
    from golfpack.model import CastedLinear

    out: dict[str, tuple[torch.nn.Module, str]] = {}
    for path, m in model.named_modules():
        if isinstance(m, CastedLinear):
            out[f"{path}.weight"] = (m, "input")
    if getattr(model, "lm_head", None) is None and hasattr(model, "final_norm"):
        out["tok_emb.weight"] = (model.final_norm, "output")
    return out


@torch.no_grad()
def collect_hessians(model: torch.nn.Module, batch: Any, names: Iterable[str] | None = None, *,
                     device: str = "cpu", micro: int = 8, feeds: dict[str, Any] | None = None) -> dict[str, Tensor]:
    """H = 2/n X^T X (float64, returned on the CPU) for each requested linear weight over every token of `batch`,
    from ONE forward pass per micro-batch (hooks on every layer at once), accumulated on `device` (no autocast:
    GPTQ needs full precision).

    Weights fed by the same tensor (c_q, c_k and c_v all read the normed block input) share one
    X^T X per forward instead of computing it three times. A block called k times (depth recurrence)
    adds all k inputs into one Hessian. `feeds` overrides the discovery (`weight_inputs`)."""
    feeds = weight_inputs(model) if feeds is None else feeds
    want = list(feeds) if names is None else [n for n in names if n in feeds]
    acc: dict[str, Tensor] = {}
    count: dict[str, int] = {}
    last: list[Any] = [None, None]  # (input tensor, its Gram): hooks of one input fire back to back

    def add(name: str, x: Tensor) -> None:
        if last[0] is not x:
            x2 = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)  # on the device: no transfer per layer
            last[0], last[1] = x, (x2.T @ x2, x2.shape[0])
        gram, n = last[1]
        if name in acc:
            acc[name] += gram
        else:
            acc[name] = gram.clone()
        count[name] = count.get(name, 0) + n

    hooks = []
    for name in want:
        m, side = feeds[name]
        if side == "output":
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
    return {n: ((2.0 / max(1, count[n])) * acc[n]).cpu() for n in want if n in acc}


def hessians_for(state_dict: dict[str, Tensor], config: Any, names: Iterable[str], cal: GptqCalibration, *,
                 tokenizer: str | None = None, source: str | None = None, device: str = "cpu",
                 model: Any = None) -> tuple[dict[str, Tensor], GptqCalibration]:
    """Hessians of the named tensors that are linear weights of the model (GPTQ has no meaning for the
    others: they keep round-to-nearest), and the calibration (digest filled in) they came from.

    `model`: the adapter (`golfpack.adapters.load_adapter`: None is the baseline family, else 'FILE.py[:NAME]')."""
    from dataclasses import replace

    from golfpack.adapters import load_adapter

    names = list(names)
    if not names:
        return {}, cal
    adapter = load_adapter(model)
    if adapter.is_baseline and config is None:
        raise UsageError("GPTQ specs need the model itself (calibration forwards), but this checkpoint has no baseline-family "
                         "config: pass model='FILE.py[:NAME]' with your model code (docs/models.md)", param="model")
    net = adapter.build(state_dict, config, device=device)
    vocab = config.vocab_size if adapter.is_baseline else net.vocab_size
    batch = calibration_batch(cal, tokenizer=tokenizer, vocab_size=vocab, source=source)
    model = net
    return collect_hessians(model, batch, names, device=device), replace(cal, digest=batch.digest)


__all__ = ["GptqCalibration", "calibration_batch", "collect_hessians", "hessians_for", "weight_inputs"]  # the first two: re-exported
