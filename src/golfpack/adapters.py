"""Model adapters: how golfpack runs a language model it did not define (see docs/models.md).

golfpack needs three things from a model, whatever its architecture:

1. build it from a state dict (`ModelAdapter.build`): golfpack loads the weights itself, strictly, so a
   key the module does not have (or lacks) is reported by name;
2. next-token logits (B, T, V) for token ids (B, T) (`LanguageModel.logits`);
3. the linear layers whose weights are state-dict tensors, for GPTQ Hessians (found by the packer's
   forward hooks, `packer.hessian.weight_inputs`), plus any the adapter names (`extra_inputs`: a tied
   head computed with `F.linear(x, tok_emb.weight)` has no module to hook; its input is the output of
   the final norm).

The baseline family (`golfpack.model`) is the built-in adapter (`BASELINE`). A user's model comes from
a Python file, `FILE.py[:NAME]` (`load_adapter`): NAME (default `build_model`) is either a callable
`NAME(state_dict[, config]) -> nn.Module` or an `nn.Module` class, built from the file's
`Hyperparameters` defaults (its attributes named like the class's constructor parameters). The module's
`forward(input_ids)` (or its `logits(input_ids)` method, or a file-level `logits(model, input_ids)`)
returns the logits. A file may also define `HESSIAN_INPUTS = {"tok_emb.weight": "final_norm"}`: weight
name -> the module whose OUTPUT is that weight's input.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from golfpack.errors import UsageError

DEFAULT_NAME = "build_model"
BASELINE_NAME = "baseline"  # the adapter name of the built-in family (never written to headers: bytes stay as before)


class LanguageModel(nn.Module):
    """A user's module behind the interface the rest of golfpack calls (the baseline GPT has these natively).

    The user's module (`net`) lends this one its children, parameters and buffers under their own names
    (the very objects, not copies), so `state_dict()`, `named_parameters()` and `.to()` speak the
    checkpoint's keys, as they do for the baseline GPT. No KV cache: `generate` recomputes the whole
    prefix for every sampled token (`kv_cache = False` says so)."""

    kv_cache = False

    def __init__(self, net: nn.Module, logits_fn: Callable[[nn.Module, Tensor], Any] | None, origin: str,
                 extra_inputs: dict[str, str] | None = None) -> None:
        super().__init__()
        object.__setattr__(self, "net", net)  # not a submodule: its parts are registered here directly
        for name, child in net.named_children():
            self.add_module(name, child)
        for name, prm in net.named_parameters(recurse=False):
            self.register_parameter(name, prm)
        for name, buf in net.named_buffers(recurse=False):
            self.register_buffer(name, buf, persistent=name not in net._non_persistent_buffers_set)
        self._logits_fn = logits_fn
        self.origin = origin  # "FILE.py:NAME", for error messages
        self.extra_inputs = dict(extra_inputs or {})
        self.vocab_size = 0  # read from the logits by `probe`

    def train(self, mode: bool = True) -> LanguageModel:
        super().train(mode)
        self.net.training = mode
        return self

    def raw_logits(self, input_ids: Tensor) -> Any:
        if self._logits_fn is not None:
            return self._logits_fn(self.net, input_ids)
        fn = getattr(self.net, "logits", None)
        return fn(input_ids) if callable(fn) else self.net(input_ids)

    def logits(self, input_ids: Tensor) -> Tensor:
        """fp32 next-token logits (B, T, V)."""
        out = self.raw_logits(input_ids)
        _check_logits(out, input_ids, self.origin)
        return out.float()

    def token_nll(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        logits = self.logits(input_ids)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1), reduction="none").view_as(target_ids)

    def forward(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        return self.token_nll(input_ids, target_ids).mean()

    @torch.no_grad()
    def generate(self, prefix: Tensor, steps: int, *, generator: torch.Generator | None = None, temperature: float = 1.0) -> Tensor:
        """Sample `steps` tokens after `prefix` (B, P), recomputing the full sequence each step (no KV cache)."""
        out = prefix
        for _ in range(steps):
            probs = torch.softmax(self.logits(out)[:, -1].float() / temperature, dim=-1)
            out = torch.cat((out, torch.multinomial(probs, 1, generator=generator)), dim=1)
        return out

    @torch.no_grad()
    def probe(self) -> int:
        """One tiny forward: checks the logits' shape and records the vocab (V) they give."""
        was = self.net.training
        self.net.eval()
        try:
            dev = next((p.device for p in self.net.parameters()), torch.device("cpu"))
            ids = torch.zeros((1, 2), dtype=torch.long, device=dev)
            try:
                out = self.raw_logits(ids)
            except Exception as e:  # a forward that needs targets, or crashes on short input
                raise UsageError(f"{self.origin}: the model's forward failed on token ids of shape (1, 2) "
                                 f"({type(e).__name__}: {e}); it must map input_ids (B, T) to logits (B, T, V) "
                                 "(if forward returns the loss, define logits(model, input_ids) in the file)",
                                 param="model") from None
            _check_logits(out, ids, self.origin)
        finally:
            self.net.train(was)
        self.vocab_size = int(out.shape[-1])
        return self.vocab_size


def _check_logits(out: Any, ids: Tensor, origin: str) -> None:
    b, t = ids.shape
    if isinstance(out, Tensor) and out.dim() == 3 and tuple(out.shape[:2]) == (b, t) and out.is_floating_point():
        return
    got = f"a tensor of shape {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"
    raise UsageError(f"{origin}: the model returned {got} for token ids of shape ({b}, {t}); it must return "
                     f"next-token logits of shape ({b}, {t}, V) (if forward returns the loss, define "
                     "logits(model, input_ids) in the file)", param="model")


def state_module(model: nn.Module) -> nn.Module:
    """The module whose state-dict keys are the checkpoint's (a LanguageModel's are its net's, by construction)."""
    return model


def extra_inputs(model: nn.Module) -> dict[str, str]:
    """Weight name -> path of the module whose OUTPUT is that weight's input (layers with no nn.Linear to hook)."""
    if isinstance(model, LanguageModel):
        return dict(model.extra_inputs)
    # the baseline family's tied head: logits = final_norm(x) @ tok_emb.weight.T
    if getattr(model, "lm_head", "absent") is None and hasattr(model, "final_norm"):
        return {"tok_emb.weight": "final_norm"}
    return {}


def load_weights(net: nn.Module, state_dict: dict[str, Tensor], origin: str) -> None:
    """Strict load in the module's own dtypes; a key mismatch is listed in full, not as a torch traceback."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    if missing or unexpected:
        def show(keys: list[str]) -> str:
            return ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "") if keys else "none"
        raise UsageError(f"{origin}: the module's keys do not match the state dict: missing {show(missing)}; "
                         f"unexpected {show(unexpected)}. Fix the model code (or its config) so it builds the "
                         "checkpoint's architecture", param="model")
    bad = [f"{k} {tuple(v.shape)} vs module {tuple(own[k].shape)}" for k, v in state_dict.items() if tuple(v.shape) != tuple(own[k].shape)]
    if bad:
        raise UsageError(f"{origin}: shape mismatch: {'; '.join(bad[:5])}", param="model")
    sd = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    net.load_state_dict(sd, strict=True)


@dataclass
class ModelAdapter:
    """How to build a runnable model from a state dict. `file is None`: the built-in baseline family."""

    name: str  # "baseline" or "FILE.py:NAME"
    file: Path | None = None  # the user's model file
    sha256: str | None = None  # of that file's bytes, recorded in the artifact header
    factory: Any = None  # the NAME object (callable or nn.Module class)
    module: Any = field(default=None, repr=False)  # the imported file
    config: dict[str, Any] | None = None  # the JSON config of `FILE.py[:NAME]@CONFIG.json`, handed to NAME
    config_sha256: str | None = None  # of that JSON file's bytes, recorded in the artifact header

    @property
    def is_baseline(self) -> bool:
        return self.file is None

    def meta(self) -> dict[str, Any]:
        """Header meta naming the model code (empty for the baseline family: its artifacts stay byte-identical)."""
        if self.file is None:
            return {}
        meta: dict[str, Any] = {"model_adapter": self.name, "model_sha256": self.sha256}
        if self.config_sha256 is not None:
            meta["model_config_sha256"] = self.config_sha256
        return meta

    def build(self, state_dict: dict[str, Tensor], config: Any = None, device: str | torch.device = "cpu") -> nn.Module:
        """The model in fp32 on `device`, weights loaded strictly; a user's module is checked to give (B, T, V) logits."""
        if self.file is None:
            from golfpack.model import ModelConfig, build_model

            if config is None:
                raise UsageError("this state dict is not a baseline-family model (no config could be inferred): "
                                 "pass model='FILE.py[:NAME]' with your own model code (see docs/models.md)", param="model")
            cfg = config if isinstance(config, ModelConfig) else ModelConfig.from_dict(config)
            return build_model(cfg, state_dict, device=device)
        net = self._construct(state_dict, config if isinstance(config, dict) else self.config)
        load_weights(net, state_dict, self.name)
        lm = LanguageModel(net.float(), getattr(self.module, "logits", None), self.name,
                           getattr(self.module, "HESSIAN_INPUTS", None)).to(device)
        lm.probe()
        return lm

    def _construct(self, state_dict: dict[str, Tensor], config: dict[str, Any] | None) -> nn.Module:
        f = self.factory
        try:
            if isinstance(f, type) and issubclass(f, nn.Module):
                net = f(**self._hyper_kwargs(f))
            else:
                params = list(inspect.signature(f).parameters)
                net = f(state_dict, config) if len(params) >= 2 else f(state_dict)
        except UsageError:
            raise
        except Exception as e:
            raise UsageError(f"{self.name} failed to build the model: {type(e).__name__}: {e}", param="model") from None
        if not isinstance(net, nn.Module):
            raise UsageError(f"{self.name} returned a {type(net).__name__}, not an nn.Module: return the built model",
                             param="model")
        return net

    def _hyper_kwargs(self, cls: type) -> dict[str, Any]:
        hp = getattr(self.module, "Hyperparameters", None)
        src = hp() if isinstance(hp, type) else hp
        kw, missing = {}, []
        for pname, par in inspect.signature(cls.__init__).parameters.items():
            if pname == "self" or par.kind in (par.VAR_POSITIONAL, par.VAR_KEYWORD):
                continue
            if src is not None and hasattr(src, pname):
                kw[pname] = getattr(src, pname)
            elif par.default is par.empty:
                missing.append(pname)
        if missing:
            raise UsageError(f"{self.name}: cannot build {cls.__name__}: no Hyperparameters attribute for "
                             f"{', '.join(missing)}; add them to Hyperparameters or define build_model(state_dict)",
                             param="model")
        return kw


BASELINE = ModelAdapter(BASELINE_NAME)
_LOADED: dict[tuple[str, str, str, str], ModelAdapter] = {}


def load_adapter(spec: str | ModelAdapter | None) -> ModelAdapter:
    """`None` -> the baseline family; "FILE.py[:NAME]" -> the user's code (imported once per file content);
    "FILE.py[:NAME]@CONFIG.json" -> the same, with that JSON object passed to NAME as its `config`."""
    if spec is None:
        return BASELINE
    if isinstance(spec, ModelAdapter):
        return spec
    text = str(spec)
    config, config_sha = None, None
    head_c, at, cfg_s = text.rpartition("@")
    if at and cfg_s.lower().endswith(".json") and not Path(text).is_file():  # FILE.py[:NAME]@CONFIG.json
        text = head_c
        config, config_sha = _read_model_config(Path(cfg_s))
    path_s, name = text, ""
    head, sep, tail = text.rpartition(":")
    if sep and tail.isidentifier() and not Path(text).is_file():  # FILE.py:NAME (a bare path may hold a colon)
        path_s, name = head, tail
    name = name or DEFAULT_NAME
    path = Path(path_s)
    if not path.is_file():
        raise UsageError(f"model file {path}: not found (pass model='FILE.py[:NAME]')", param="model")
    data = path.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    key = (str(path.resolve()), sha, name, config_sha or "")
    if key in _LOADED:
        return _LOADED[key]
    same_code = next((a for k, a in _LOADED.items() if k[:3] == key[:3]), None)
    if same_code is not None:  # the same code with another config: import the file once, not per config
        ad = ModelAdapter(same_code.name, path, sha, same_code.factory, same_code.module, config, config_sha)
        _LOADED[key] = ad
        return ad
    mod_name = f"golfpack_user_model_{sha[:16]}"
    ispec = importlib.util.spec_from_file_location(mod_name, path)
    if ispec is None or ispec.loader is None:
        raise UsageError(f"model file {path}: not importable as Python (expected a .py file)", param="model")
    module = importlib.util.module_from_spec(ispec)
    parent = str(path.resolve().parent)
    if parent not in sys.path:  # the adapter imports its neighbours (a record's train_gpt.py)
        sys.path.insert(0, parent)
    sys.modules[mod_name] = module
    try:
        ispec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[mod_name]
        raise UsageError(f"model file {path} failed to import: {type(e).__name__}: {e}; fix the file (or its imports) "
                         f"so `python {path}` runs", param="model") from None
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        have = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_")
                      and getattr(v, "__module__", None) == mod_name)
        raise UsageError(f"model file {path} defines no {name!r} (callables defined there: {', '.join(have) or 'none'}); "
                         f"name one as model='{path}:NAME', or define build_model(state_dict)", param="model")
    ad = ModelAdapter(f"{path.name}:{name}", path, sha, factory, module, config, config_sha)
    _LOADED[key] = ad
    return ad


MAX_MODEL_CONFIG_BYTES = 1 << 20  # a model config is a few hundred bytes; refuse anything absurd before parsing


def _read_model_config(path: Path) -> tuple[dict[str, Any], str]:
    """The JSON object of `@CONFIG.json` and its sha256; UsageError naming the file for anything else."""
    import json

    def refuse(c: str) -> float:
        raise ValueError(f"non-finite number {c}")

    if not path.is_file():
        raise UsageError(f"model config {path}: not found (pass model='FILE.py[:NAME]@CONFIG.json')", param="model")
    data = path.read_bytes()
    if len(data) > MAX_MODEL_CONFIG_BYTES:
        raise UsageError(f"model config {path}: {len(data):,} bytes, over the {MAX_MODEL_CONFIG_BYTES:,}-byte limit",
                         param="model")
    try:
        obj = json.loads(data.decode("utf-8"), parse_constant=refuse)
    except (UnicodeDecodeError, ValueError) as e:
        raise UsageError(f"model config {path}: not valid JSON ({e})", param="model") from None
    if not isinstance(obj, dict):
        raise UsageError(f"model config {path}: must hold a JSON object, got {type(obj).__name__}", param="model")
    return obj, hashlib.sha256(data).hexdigest()


__all__ = ["BASELINE", "BASELINE_NAME", "DEFAULT_NAME", "LanguageModel", "ModelAdapter", "extra_inputs", "load_adapter",
           "load_weights", "state_module"]
