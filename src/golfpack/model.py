"""The challenge baseline GPT family: one definition shared by trainer, packer and evaluator.

State-dict keys and the forward arithmetic follow the challenge's `train_gpt.py` exactly, so a
checkpoint written by that script loads here and scores the same; the knobs that forks added
(MLP activation power, untied head, RoPE base) are fields of `ModelConfig`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = ("relu2", "relu3", "leaky_relu2")

# Names of small "control" parameters (gains, mixes) the baseline keeps in fp32.
CONTROL_TENSOR_NAME_PATTERNS = (
    "attn_scale",
    "attn_scales",
    "mlp_scale",
    "mlp_scales",
    "resid_mix",
    "resid_mixes",
    "q_gain",
    "skip_weight",
    "skip_weights",
)


# Accepted ranges of ModelConfig's numeric fields (far beyond any 16 MB model, yet small enough that
# nothing sized by them - expected_shapes, the rotary table - can run away).
_INT_RANGES = {"vocab_size": (1, 1 << 20), "num_layers": (1, 1024), "model_dim": (1, 1 << 16), "num_heads": (1, 1024),
               "num_kv_heads": (1, 1024), "mlp_hidden": (1, 1 << 18)}
_FLOAT_RANGES = {"logit_softcap": (1e-3, 1e6), "rope_base": (1.0, 1e12), "qk_gain_init": (-1e6, 1e6),
                 "tied_embed_init_std": (0.0, 1e3), "leaky_slope": (-1e3, 1e3)}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of one baseline-family GPT. Everything needed to rebuild it from weights."""

    vocab_size: int = 1024  # tokenizer vocabulary; rows of tok_emb
    num_layers: int = 9  # transformer blocks (first half encoder, second half decoder for U-Net skips)
    model_dim: int = 512  # residual stream width
    num_heads: int = 8  # query heads; head_dim = model_dim // num_heads
    num_kv_heads: int = 4  # key/value heads (GQA); must divide num_heads
    mlp_hidden: int = 1024  # MLP hidden width (mlp_mult * model_dim in the baseline)
    tie_embeddings: bool = True  # logits use tok_emb.weight; False adds lm_head.weight
    skip_weights: bool = True  # U-Net skip connections between mirrored blocks
    logit_softcap: float = 30.0  # logits = cap * tanh(raw / cap)
    rope_base: float = 10000.0  # RoPE frequency base; tables are recomputed in fp32 at load
    qk_gain_init: float = 1.5  # initial per-head query gain (training init only)
    tied_embed_init_std: float = 0.005  # std of tok_emb init when tied (training init only)
    activation: str = "relu2"  # MLP nonlinearity: relu2 | relu3 | leaky_relu2
    leaky_slope: float = 0.5  # negative slope for leaky_relu2

    def __post_init__(self) -> None:
        # Types and ranges first: a config read from a file is hostile until checked (a bool is not an
        # int, 1e400 is not a softcap, 2^31 layers are not a model), and the checks below assume them.
        problems = []
        for name, (lo, hi) in _INT_RANGES.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                problems.append(f"{name} must be an int, got {type(v).__name__}")
            elif not lo <= v <= hi:
                problems.append(f"{name} must be in [{lo}, {hi}], got {v}")
        for name, (lo, hi) in _FLOAT_RANGES.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                problems.append(f"{name} must be a number, got {type(v).__name__}")
            elif not (math.isfinite(v) and lo <= v <= hi):
                problems.append(f"{name} must be finite and in [{lo:g}, {hi:g}], got {v!r}")
        for name in ("tie_embeddings", "skip_weights"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name} must be a bool, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.activation, str):
            problems.append(f"activation must be a string, got {type(self.activation).__name__}")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.num_heads <= 0 or self.model_dim % self.num_heads:
            problems.append(f"model_dim {self.model_dim} must be divisible by num_heads {self.num_heads}")
        elif (self.model_dim // self.num_heads) % 2:
            problems.append(f"head_dim {self.model_dim // self.num_heads} must be even for RoPE")
        if self.num_kv_heads <= 0 or self.num_heads % self.num_kv_heads:
            problems.append(f"num_heads {self.num_heads} must be divisible by num_kv_heads {self.num_kv_heads}")
        if self.logit_softcap <= 0:
            problems.append(f"logit_softcap must be positive, got {self.logit_softcap}")
        for name in ("vocab_size", "num_layers", "model_dim", "mlp_hidden"):
            if getattr(self, name) <= 0:
                problems.append(f"{name} must be positive, got {getattr(self, name)}")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def num_encoder_layers(self) -> int:
        return self.num_layers // 2

    @property
    def num_skip_weights(self) -> int:
        return min(self.num_encoder_layers, self.num_layers - self.num_encoder_layers) if self.skip_weights else 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """The config of a JSON object (e.g. a QGv3 header's `config`): ValueError on a non-object, unknown
        field, or any field of the wrong type or out of range (__post_init__)."""
        if not isinstance(d, dict):
            raise ValueError(f"a ModelConfig must be an object, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)


class RMSNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    """fp32 master weights, cast to the activation dtype at matmul time (bf16 under autocast)."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class Rotary(nn.Module):
    """RoPE cos/sin tables, computed in fp32 and never stored in the state dict."""

    def __init__(self, dim: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self._cache: tuple[int, torch.device, Tensor, Tensor] | None = None

    def forward(self, seq_len: int, device: torch.device, dtype: torch.dtype, start: int = 0) -> tuple[Tensor, Tensor]:
        """Tables for positions start .. start+seq_len-1 (a longer cached table is sliced, not rebuilt)."""
        end = start + seq_len
        c = self._cache
        if c is None or c[0] < end or c[1] != device:
            t = torch.arange(end, device=device, dtype=torch.float32)
            freqs = torch.outer(t, self.inv_freq.to(device=device, dtype=torch.float32))
            c = (end, device, freqs.cos()[None, None], freqs.sin()[None, None])
            self._cache = c
        return c[2][:, :, start:end].to(dtype), c[3][:, :, start:end].to(dtype)


def apply_rotary_emb(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        dim, kv_dim = cfg.model_dim, cfg.num_kv_heads * cfg.head_dim
        self.c_q = CastedLinear(dim, dim, bias=False)
        self.c_k = CastedLinear(dim, kv_dim, bias=False)
        self.c_v = CastedLinear(dim, kv_dim, bias=False)
        self.proj = CastedLinear(dim, dim, bias=False)
        self.proj._zero_init = True
        self.q_gain = nn.Parameter(torch.full((cfg.num_heads,), cfg.qk_gain_init, dtype=torch.float32))
        self.rotary = Rotary(self.head_dim, cfg.rope_base)

    def forward(self, x: Tensor, kv: LayerCache | None = None) -> Tensor:
        b, t, d = x.shape
        q = self.c_q(x).reshape(b, t, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.c_k(x).reshape(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.c_v(x).reshape(b, t, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = F.rms_norm(q, (q.size(-1),))
        k = F.rms_norm(k, (k.size(-1),))
        start = 0 if kv is None else kv.length
        cos, sin = self.rotary(t, x.device, q.dtype, start)
        q = apply_rotary_emb(q, cos, sin)
        k = apply_rotary_emb(k, cos, sin)
        q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        if kv is not None:
            k, v = kv.extend(k, v)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=start == 0, enable_gqa=self.num_kv_heads != self.num_heads
        )
        return self.proj(y.transpose(1, 2).contiguous().reshape(b, t, d))


@dataclass
class LayerCache:
    """One block's keys/values of every token seen so far (incremental decoding only).

    With `capacity`, the buffers are allocated once for that many tokens and each step writes in place
    (no growing torch.cat: that copies the whole cache every token, quadratic in the length)."""

    k: Tensor | None = None  # (B, kv_heads, T, head_dim), RoPE already applied
    v: Tensor | None = None
    length: int = 0  # tokens cached (= position of the next token)
    capacity: int = 0  # tokens the preallocated buffers hold (0: grow by concatenation)

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        n = k.shape[2]
        if self.capacity and self.length + n <= self.capacity:
            if self.k is None or self.v is None:
                shape = (k.shape[0], k.shape[1], self.capacity, k.shape[3])
                self.k, self.v = k.new_empty(shape), v.new_empty(shape)
            self.k[:, :, self.length : self.length + n] = k
            self.v[:, :, self.length : self.length + n] = v
            self.length += n
            return self.k[:, :, : self.length], self.v[:, :, : self.length]
        if self.capacity:  # full buffers: keep only what is filled, then grow
            assert self.k is not None and self.v is not None
            self.k, self.v, self.capacity = self.k[:, :, : self.length], self.v[:, :, : self.length], 0
        self.k = k if self.k is None else torch.cat((self.k, k), dim=2)
        self.v = v if self.v is None else torch.cat((self.v, v), dim=2)
        self.length = self.k.shape[2]
        return self.k, self.v


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc = CastedLinear(cfg.model_dim, cfg.mlp_hidden, bias=False)
        self.proj = CastedLinear(cfg.mlp_hidden, cfg.model_dim, bias=False)
        self.proj._zero_init = True
        self.activation = cfg.activation
        self.leaky_slope = cfg.leaky_slope

    def forward(self, x: Tensor) -> Tensor:
        h = self.fc(x)
        if self.activation == "relu2":
            h = torch.relu(h).square()
        elif self.activation == "relu3":
            h = torch.relu(h) ** 3
        else:
            h = F.leaky_relu(h, self.leaky_slope).square()
        return self.proj(h)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.model_dim
        self.attn_norm = RMSNorm()
        self.mlp_norm = RMSNorm()
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.mlp_scale = nn.Parameter(torch.ones(dim, dtype=torch.float32))
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(dim), torch.zeros(dim))).float())

    def forward(self, x: Tensor, x0: Tensor, kv: LayerCache | None = None) -> Tensor:
        mix = self.resid_mix.to(x.dtype)
        x = mix[0][None, None, :] * x + mix[1][None, None, :] * x0
        x = x + self.attn_scale.to(x.dtype)[None, None, :] * self.attn(self.attn_norm(x), kv)
        x = x + self.mlp_scale.to(x.dtype)[None, None, :] * self.mlp(self.mlp_norm(x))
        return x


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.model_dim)
        self.num_encoder_layers = cfg.num_encoder_layers
        self.num_decoder_layers = cfg.num_layers - cfg.num_encoder_layers
        if cfg.skip_weights:
            self.skip_weights = nn.Parameter(torch.ones(cfg.num_skip_weights, cfg.model_dim, dtype=torch.float32))
        else:
            self.register_parameter("skip_weights", None)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.num_layers)])
        self.final_norm = RMSNorm()
        self.lm_head = None if cfg.tie_embeddings else CastedLinear(cfg.model_dim, cfg.vocab_size, bias=False)
        if self.lm_head is not None:
            self.lm_head._zero_init = True
        self._init_weights()

    def _init_weights(self) -> None:
        if self.config.tie_embeddings:
            nn.init.normal_(self.tok_emb.weight, mean=0.0, std=self.config.tied_embed_init_std)
        for m in self.modules():
            if isinstance(m, nn.Linear) and getattr(m, "_zero_init", False):
                nn.init.zeros_(m.weight)

    def hidden(self, input_ids: Tensor, cache: list[LayerCache] | None = None) -> Tensor:
        """Final-normed hidden states, shape (B, T, D). With `cache` (one LayerCache per block), the
        tokens continue the cached ones (see `generate`)."""
        if cache is not None and cache[0].length and input_ids.shape[1] != 1:
            raise ValueError("a KV cache takes a prefix first, then one token per step")
        x = F.rms_norm(self.tok_emb(input_ids), (self.config.model_dim,))
        x0 = x
        kv = cache if cache is not None else [None] * len(self.blocks)
        skips: list[Tensor] = []
        for i in range(self.num_encoder_layers):
            x = self.blocks[i](x, x0, kv[i])
            skips.append(x)
        for i in range(self.num_decoder_layers):
            if skips and self.skip_weights is not None:
                x = x + self.skip_weights[i].to(x.dtype)[None, None, :] * skips.pop()
            j = self.num_encoder_layers + i
            x = self.blocks[j](x, x0, kv[j])
        return self.final_norm(x)

    def block_inputs(self, input_ids: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor], Tensor]:
        """(x0, xs, encoder outputs, final-normed hidden) of one plain forward: xs[i] is the residual stream
        entering step i (before a decoder step adds its skip). With these, `hidden_from` reruns only the
        blocks from some layer on - what a change to that layer's weights can move (the search's prefix cache)."""
        x = F.rms_norm(self.tok_emb(input_ids), (self.config.model_dim,))
        x0 = x
        xs: list[Tensor] = []
        enc: list[Tensor] = []
        for i in range(self.num_encoder_layers):
            xs.append(x)
            x = self.blocks[i](x, x0)
            enc.append(x)
        skips = list(enc)
        for i in range(self.num_decoder_layers):
            xs.append(x)
            if skips and self.skip_weights is not None:
                x = x + self.skip_weights[i].to(x.dtype)[None, None, :] * skips.pop()
            x = self.blocks[self.num_encoder_layers + i](x, x0)
        return x0, xs, enc, self.final_norm(x)

    def block_output(self, layer: int, x0: Tensor, xs: list[Tensor], enc: list[Tensor]) -> Tensor:
        """The output of block `layer` alone from `block_inputs`' cache (a decoder step adds its skip first):
        what `hidden_from(..., out=)` continues from, so several variants of that block's weights can share
        the blocks after it in one batched forward."""
        ne = self.num_encoder_layers
        x = xs[layer]
        if layer >= ne:
            i = layer - ne
            if ne - i > 0 and self.skip_weights is not None:
                x = x + self.skip_weights[i].to(x.dtype)[None, None, :] * enc[ne - i - 1]
        return self.blocks[layer](x, x0)

    def hidden_from(self, layer: int, x0: Tensor, xs: list[Tensor], enc: list[Tensor], out: Tensor | None = None) -> Tensor:
        """Final-normed hidden states recomputed from block `layer` on, the earlier ones taken from
        `block_inputs`' cache: the same operations in the same order as `hidden`, so bit-for-bit the same.

        `out`: block `layer`'s output already computed (`block_output`), for k variants stacked along the
        batch (k x B rows): the cached tensors are repeated k times and the rest runs once for all of them."""
        ne = self.num_encoder_layers
        k = 1 if out is None else out.shape[0] // x0.shape[0]
        assert out is None or out.shape[0] == k * x0.shape[0], "out must stack whole copies of the cached batch"

        def rep(t: Tensor) -> Tensor:
            return t if k == 1 else t.repeat(k, *([1] * (t.ndim - 1)))

        x0 = rep(x0)
        x = xs[layer] if out is None else out
        if layer < ne:
            skips = [rep(e) for e in enc[:layer]]
            for i in range(layer, ne):
                if out is None or i > layer:
                    x = self.blocks[i](x, x0)
                skips.append(x)
            first = 0
        else:
            first = layer - ne
            skips = [rep(e) for e in enc[: max(0, ne - first)]]
            if out is not None:  # block `layer` (decoder step `first`, its skip included) is done
                if skips and self.skip_weights is not None:
                    skips.pop()
                first += 1
        for i in range(first, self.num_decoder_layers):
            if skips and self.skip_weights is not None:
                x = x + self.skip_weights[i].to(x.dtype)[None, None, :] * skips.pop()
            x = self.blocks[ne + i](x, x0)
        return self.final_norm(x)

    def logits(self, input_ids: Tensor, cache: list[LayerCache] | None = None) -> Tensor:
        """Soft-capped logits in fp32, shape (B, T, V)."""
        return self.logits_from_hidden(self.hidden(input_ids, cache))

    @torch.no_grad()
    def generate(self, prefix: Tensor, steps: int, *, generator: torch.Generator | None = None, temperature: float = 1.0,
                 on_step: Callable[[], None] | None = None) -> Tensor:
        """Sample `steps` tokens after `prefix` (B, P) with a KV cache; returns (B, P + steps).

        Used to write the model's own calibration text: in-distribution for the model, and never
        the validation tokens. Same arithmetic as `logits` (tested against full recomputation).
        `on_step` is called after each sampled token (a progress bar).
        """
        cache = [LayerCache(capacity=prefix.shape[1] + steps) for _ in self.blocks]
        for b in self.blocks:  # one RoPE table for every position, not one rebuild per step
            b.attn.rotary(prefix.shape[1] + steps, prefix.device, torch.float32)  # type: ignore[union-attr,operator]
        out = [prefix]
        logits = self.logits(prefix, cache)[:, -1]
        for step in range(steps):
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
            out.append(nxt)
            if on_step is not None:
                on_step()
            if step + 1 < steps:
                logits = self.logits(nxt, cache)[:, -1]
        return torch.cat(out, dim=1)

    def logits_from_hidden(self, h: Tensor) -> Tensor:
        """Soft-capped fp32 logits for hidden states of any leading shape (lets the evaluator skip unscored rows)."""
        w = self.tok_emb.weight if self.lm_head is None else self.lm_head.weight
        raw = F.linear(h, w.to(h.dtype))
        cap = self.config.logit_softcap
        return (cap * torch.tanh(raw / cap)).float()

    def token_nll(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        """Per-token cross-entropy (nats, fp32), shape (B, T)."""
        logits = self.logits(input_ids)
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target_ids.reshape(-1), reduction="none").view_as(
            target_ids
        )

    def forward(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        """Mean cross-entropy, the baseline's training/eval loss."""
        return self.token_nll(input_ids, target_ids).mean()


def build_model(cfg: ModelConfig, state_dict: dict[str, Tensor] | None = None, device: str | torch.device = "cpu") -> GPT:
    """Build a GPT in fp32 and (optionally) load weights strictly, whatever dtype they were stored in."""
    model = GPT(cfg)
    if state_dict is not None:
        sd = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
        model.load_state_dict(sd, strict=True)
    return model.to(device)


def autocast(device: str | torch.device, enabled: bool = True) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on a CUDA device (matmuls in bf16, the model's fp32 logits and norms stay fp32), a no-op
    elsewhere: the one switch every phase's forwards go through, so a CPU run takes the same code path."""
    dev = torch.device(device)
    if enabled and dev.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def count_params(cfg: ModelConfig) -> int:
    """Parameter count implied by a config (no model is built)."""
    d, kv = cfg.model_dim, cfg.num_kv_heads * cfg.head_dim
    block = 2 * d * d + 2 * kv * d + 2 * d * cfg.mlp_hidden + cfg.num_heads + 4 * d
    total = cfg.vocab_size * d + cfg.num_layers * block + cfg.num_skip_weights * d
    if not cfg.tie_embeddings:
        total += cfg.vocab_size * d
    return total


__all__ = ["ACTIVATIONS", "CONTROL_TENSOR_NAME_PATTERNS", "GPT", "LayerCache", "ModelConfig", "autocast", "build_model", "count_params"]
