"""A record-style `train_gpt.py`, cut down: the challenge baseline's GPT whose forward(input_ids, target_ids)
returns the LOSS (never the logits), configured by a `Hyperparameters` class of env-var defaults. The
docs' 10-line adapter (docs/models.md) must make it usable by golfpack as it is."""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Hyperparameters:
    vocab_size = int(os.environ.get("VOCAB_SIZE", 1024))
    num_layers = int(os.environ.get("NUM_LAYERS", 2))
    model_dim = int(os.environ.get("MODEL_DIM", 32))
    num_heads = int(os.environ.get("NUM_HEADS", 2))
    num_kv_heads = int(os.environ.get("NUM_KV_HEADS", 1))
    mlp_mult = int(os.environ.get("MLP_MULT", 2))
    tie_embeddings = bool(int(os.environ.get("TIE_EMBEDDINGS", "1")))
    rope_base = float(os.environ.get("ROPE_BASE", 10000.0))
    logit_softcap = float(os.environ.get("LOGIT_SOFTCAP", 30.0))
    qk_gain_init = float(os.environ.get("QK_GAIN_INIT", 1.5))
    iterations = 20000  # training knobs the model does not take


class RMSNorm(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.size(-1),))


class CastedLinear(nn.Linear):
    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight.to(x.dtype))


def rope(x: Tensor, base: float) -> Tensor:
    t, d = x.size(-2), x.size(-1)
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d))
    f = torch.outer(torch.arange(t, dtype=torch.float32, device=x.device), inv)
    cos, sin, half = f.cos().to(x.dtype), f.sin().to(x.dtype), d // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos + x2 * sin, x1 * (-sin) + x2 * cos), dim=-1)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, kv_heads: int, mlp_mult: int, rope_base: float, qk_gain_init: float) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.hd, self.rope_base = heads, kv_heads, dim // heads, rope_base
        self.c_q = CastedLinear(dim, dim, bias=False)
        self.c_k = CastedLinear(dim, kv_heads * self.hd, bias=False)
        self.c_v = CastedLinear(dim, kv_heads * self.hd, bias=False)
        self.proj = CastedLinear(dim, dim, bias=False)
        self.q_gain = nn.Parameter(torch.full((heads,), qk_gain_init))
        self.fc = CastedLinear(dim, mlp_mult * dim, bias=False)
        self.mlp_proj = CastedLinear(mlp_mult * dim, dim, bias=False)
        self.attn_norm, self.mlp_norm = RMSNorm(), RMSNorm()

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        h = self.attn_norm(x)
        q = self.c_q(h).reshape(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.c_k(h).reshape(b, t, self.kv_heads, self.hd).transpose(1, 2)
        v = self.c_v(h).reshape(b, t, self.kv_heads, self.hd).transpose(1, 2)
        q = rope(F.rms_norm(q, (self.hd,)), self.rope_base) * self.q_gain.to(q.dtype)[None, :, None, None]
        k = rope(F.rms_norm(k, (self.hd,)), self.rope_base)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.kv_heads != self.heads)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp_proj(torch.relu(self.fc(self.mlp_norm(x))).square())


class GPT(nn.Module):
    def __init__(self, vocab_size: int, num_layers: int, model_dim: int, num_heads: int, num_kv_heads: int, mlp_mult: int,
                 tie_embeddings: bool, rope_base: float, logit_softcap: float, qk_gain_init: float) -> None:
        super().__init__()
        self.tie_embeddings, self.logit_softcap = tie_embeddings, logit_softcap
        self.tok_emb = nn.Embedding(vocab_size, model_dim)
        self.blocks = nn.ModuleList([Block(model_dim, num_heads, num_kv_heads, mlp_mult, rope_base, qk_gain_init)
                                     for _ in range(num_layers)])
        self.final_norm = RMSNorm()
        self.lm_head = None if tie_embeddings else CastedLinear(model_dim, vocab_size, bias=False)

    def forward(self, input_ids: Tensor, target_ids: Tensor) -> Tensor:
        x = F.rms_norm(self.tok_emb(input_ids), (self.tok_emb.embedding_dim,))
        for blk in self.blocks:
            x = blk(x)
        x = self.final_norm(x).reshape(-1, x.size(-1))
        targets = target_ids.reshape(-1)
        if self.tie_embeddings:
            logits_proj = F.linear(x, self.tok_emb.weight)
        else:
            logits_proj = self.lm_head(x)
        logits = self.logit_softcap * torch.tanh(logits_proj / self.logit_softcap)
        return F.cross_entropy(logits.float(), targets, reduction="mean")


def main() -> None:  # training would run here; importing the file must not start it
    raise SystemExit("training is not part of this test file")


if __name__ == "__main__":
    main()
