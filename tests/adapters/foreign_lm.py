"""A model outside the baseline family, for golfpack's adapter tests: the tricks the records use, small.

SwiGLU MLPs; two shared blocks looped three times (depth recurrence: 6 block calls, 2 blocks of weights);
a bigram-hash embedding (hash of the previous and current token) added to the token embedding; a
value-embedding table added to the attention values; an untied head; vocab 1024. `forward(input_ids)`
returns logits (B, T, V); golfpack loads it with `--model tests/adapters/foreign_lm.py`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Hyperparameters:
    vocab_size = 1024
    dim = 64
    heads = 4
    hidden = 128
    bigram_buckets = 512
    loops = 3


class CastedLinear(nn.Linear):  # a subclass, as records use: golfpack must still find it
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = CastedLinear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=False)
        self.gate_up = nn.Linear(dim, 2 * hidden, bias=False)
        self.down = CastedLinear(hidden, dim, bias=False)
        self.scale = nn.Parameter(torch.ones(2, dim))

    def forward(self, x: Tensor, ve: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(F.rms_norm(x, (d,))).split(d, dim=-1)
        v = v + ve  # value embedding
        q, k, v = (z.reshape(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, d)
        x = x + self.scale[0] * self.proj(y)
        g, u = self.gate_up(F.rms_norm(x, (d,))).chunk(2, dim=-1)
        return x + self.scale[1] * self.down(F.silu(g) * u)


class ForeignLM(nn.Module):
    def __init__(self, vocab_size: int = 1024, dim: int = 64, heads: int = 4, hidden: int = 128,
                 bigram_buckets: int = 512, loops: int = 3) -> None:
        super().__init__()
        self.loops, self.buckets = loops, bigram_buckets
        self.tok_emb = nn.Embedding(vocab_size, dim)
        self.bigram = nn.Embedding(bigram_buckets, dim)
        self.value_emb = nn.Embedding(vocab_size, dim)
        self.blocks = nn.ModuleList([Block(dim, heads, hidden) for _ in range(2)])
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)

    def forward(self, input_ids: Tensor) -> Tensor:
        prev = F.pad(input_ids[:, :-1], (1, 0))
        x = self.tok_emb(input_ids) + self.bigram((prev * 1009 + input_ids) % self.buckets)
        ve = self.value_emb(input_ids)
        for _ in range(self.loops):
            for blk in self.blocks:
                x = blk(x, ve)
        return self.lm_head(F.rms_norm(x, (x.size(-1),))).float()


def build_model(state_dict: dict[str, Tensor], config: dict | None = None) -> nn.Module:
    hp, cfg = Hyperparameters, config or {}  # a JSON config (`foreign_lm.py@cfg.json`) may change the loop count
    return ForeignLM(int(state_dict["tok_emb.weight"].shape[0]), hp.dim, hp.heads, hp.hidden, hp.bigram_buckets,
                     int(cfg.get("loops", hp.loops)))
