"""evaluate / evaluate_path on the real checkpoints and val tokens, against an independent reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from golfpack.errors import GolfpackError
from golfpack.evaluator.api import EvalResult, build_luts, evaluate, evaluate_path, load_model
from golfpack.formats.shards import load_tokens
from golfpack.model import GPT, ModelConfig

N_TOKENS = 65_537  # 256 sequences of 256 plus one


def reference_logits(sd: dict, x: torch.Tensor, *, power: int, softcap: float = 30.0, rope_base: float = 10000.0,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The baseline GPT forward written from the math on raw state-dict tensors (no golfpack.model).

    Computed in float64 from the stored weights, so agreement with golfpack's fp32 model to 1e-6 in
    val_loss checks its arithmetic, not a shared implementation. Shapes give the config: heads from
    q_gain, kv heads from c_k rows, layers from the block keys.
    """
    w = {k: v.to(dtype) for k, v in sd.items()}
    eps = torch.finfo(torch.float32).eps  # what rms_norm(eps=None) uses on the baseline's fp32 activations

    def rms(v):
        return v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + eps)

    emb = w["tok_emb.weight"]
    D = emb.shape[1]
    H = w["blocks.0.attn.q_gain"].numel()
    hd = D // H
    KV = w["blocks.0.attn.c_k.weight"].shape[0] // hd
    n_layers = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("blocks."))
    B, T = x.shape

    # RoPE on (first half, second half) pairs, frequencies and angles computed in fp32 as the baseline does.
    inv_freq = 1.0 / (rope_base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv_freq[None, :]
    cos, sin = ang.cos().to(dtype), ang.sin().to(dtype)

    def rope(v):  # v: (B, heads, T, hd)
        a, b = v[..., : hd // 2], v[..., hd // 2 :]
        return torch.cat((a * cos + b * sin, b * cos - a * sin), dim=-1)

    causal = torch.ones(T, T, dtype=torch.bool).tril()

    def block(i, h, h0):
        p = f"blocks.{i}."
        mix = w[p + "resid_mix"]
        h = mix[0] * h + mix[1] * h0
        a = rms(h)
        q = (a @ w[p + "attn.c_q.weight"].T).view(B, T, H, hd).transpose(1, 2)
        k = (a @ w[p + "attn.c_k.weight"].T).view(B, T, KV, hd).transpose(1, 2)
        v = (a @ w[p + "attn.c_v.weight"].T).view(B, T, KV, hd).transpose(1, 2)
        q = rope(rms(q)) * w[p + "attn.q_gain"][None, :, None, None]
        k = rope(rms(k))
        k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)  # query head j uses kv head j // (H/KV)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = att.masked_fill(~causal, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, D)
        h = h + w[p + "attn_scale"] * (y @ w[p + "attn.proj.weight"].T)
        m = torch.relu(rms(h) @ w[p + "mlp.fc.weight"].T) ** power
        return h + w[p + "mlp_scale"] * (m @ w[p + "mlp.proj.weight"].T)

    h = rms(emb[x])
    h0 = h
    n_enc = n_layers // 2
    skips = []
    for i in range(n_enc):  # U-Net: encoder outputs feed the mirrored decoder blocks, last in first out
        h = block(i, h, h0)
        skips.append(h)
    for j in range(n_layers - n_enc):
        if skips:
            h = h + w["skip_weights"][j] * skips.pop()
        h = block(n_enc + j, h, h0)
    raw = rms(h) @ w.get("lm_head.weight", emb).T  # tied head unless the checkpoint has its own
    return softcap * torch.tanh(raw / softcap)


def reference_eval_val(logits_fn, tokens: np.ndarray, sp_path, seq_len: int, batch_seqs: int = 32) -> tuple[float, float]:
    """Written here, independently of golfpack: the challenge's eval_val loop and byte accounting."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    v = sp.vocab_size()
    base = np.zeros(v, dtype=np.int16)
    lead = np.zeros(v, dtype=np.bool_)
    boundary = np.ones(v, dtype=np.bool_)
    for i in range(v):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
        else:
            piece = sp.id_to_piece(i)
            lead[i] = piece.startswith("\u2581")
            base[i] = len(piece.removeprefix("\u2581").encode("utf-8"))
    base_t, lead_t, bnd_t = torch.from_numpy(base), torch.from_numpy(lead), torch.from_numpy(boundary)
    usable = ((tokens.size - 1) // seq_len) * seq_len
    t = torch.from_numpy(tokens[: usable + 1].astype(np.int64))
    n_seqs = usable // seq_len
    loss_sum = torch.zeros((), dtype=torch.float64)
    tok_count = torch.zeros((), dtype=torch.float64)
    byte_count = torch.zeros((), dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, n_seqs, batch_seqs):
            e = min(s + batch_seqs, n_seqs)
            chunk = t[s * seq_len : e * seq_len + 1]
            x, y = chunk[:-1].reshape(-1, seq_len), chunk[1:].reshape(-1, seq_len)
            logp = logits_fn(x).double().log_softmax(-1)
            loss_sum -= logp.gather(-1, y[..., None]).sum()
            tok_count += float(y.numel())
            prev, tgt = x.reshape(-1), y.reshape(-1)
            tb = base_t[tgt].to(torch.int16)
            tb += (lead_t[tgt] & ~bnd_t[prev]).to(torch.int16)  # the leading space is a byte unless after a boundary
            byte_count += tb.to(torch.float64).sum()
    val_loss = loss_sum / tok_count
    bits_per_token = val_loss.item() / math.log(2.0)
    tokens_per_byte = tok_count.item() / byte_count.item()
    return float(val_loss.item()), float(bits_per_token * tokens_per_byte)


@pytest.fixture(scope="module")
def nolanvild(nolanvild_pt):
    torch.manual_seed(0)
    return load_model(nolanvild_pt, activation="relu3")


@pytest.fixture(scope="module")
def val_tokens(val_shard):
    return np.asarray(load_tokens(val_shard, N_TOKENS))


@pytest.fixture(scope="module")
def sp_luts(sp1024_model):
    return build_luts(sp1024_model, 1024)


@pytest.fixture(scope="module")
def reference_result(nolanvild, val_tokens, sp_luts):
    return evaluate(nolanvild, val_tokens, sp_luts, seq_len=256, stride=None, batch_size=64, device="cpu")


@pytest.mark.slow  # ~20 s: the full reference eval of a 9-layer model
def test_nolanvild_matches_independent_reference(nolanvild_pt, val_tokens, sp1024_model, reference_result):
    """golfpack's evaluate == a forward, loop and byte accounting written here from the math (relu^3 MLP)."""
    sd = torch.load(nolanvild_pt, map_location="cpu", weights_only=True)
    ref_loss, ref_bpb = reference_eval_val(lambda x: reference_logits(sd, x, power=3), val_tokens, sp1024_model, 256)
    r = reference_result
    assert r.tokens == 65_536 and r.mode == "non-overlapping" and r.windows == 256
    assert abs(r.val_loss - ref_loss) < 1e-6
    assert abs(r.val_bpb - ref_bpb) < 1e-6
    # the figures SOURCES.md gives for this checkpoint (fp32 CPU, raw weights)
    assert abs(r.val_bpb - 2.6349) < 1e-4 and abs(r.val_loss - 4.45646) < 1e-4
    assert abs(ref_bpb - 2.634927) < 1e-6  # the reference alone lands on the known figure too
    assert r.bytes == 159_910
    assert r.val_bpb == pytest.approx(r.val_loss / math.log(2) * r.tokens / r.bytes, rel=1e-12)


@pytest.mark.slow  # ~16 s: a sliding eval of nolanvild; the default suite keeps a sliding eval in test_foreign_cli
def test_sliding_scores_each_target_once_and_helps(nolanvild, val_tokens, sp_luts, reference_result):
    s = evaluate(nolanvild, val_tokens, sp_luts, seq_len=256, stride=64, batch_size=64, device="cpu")
    assert s.mode == "sliding" and s.windows == 1021
    assert s.tokens == reference_result.tokens == 65_536  # same target set...
    assert s.bytes == reference_result.bytes  # ...so the same bytes
    assert s.val_bpb < reference_result.val_bpb  # longer contexts only help a trained model
    assert s.val_bpb == pytest.approx(2.6316, abs=2e-4)


def test_sliding_equals_plain_per_window_loop():
    """Batched, head-only-on-scored-rows scoring == a plain loop (one window, full forward, last S)."""
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, mlp_hidden=64)
    model = GPT(cfg)
    with torch.no_grad():  # non-trivial weights everywhere (zero-init projections would hide context effects)
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    g = torch.Generator().manual_seed(2)
    toks = torch.randint(0, 64, (16 * 9 + 5,), generator=g)
    luts_like = _uniform_luts(64)
    L, S = 16, 4
    r = evaluate(model, toks, luts_like, seq_len=L, stride=S, batch_size=5)
    M = ((toks.numel() - 1) // L) * L
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for s in range(0, M - L + 1, S):
            x, y = toks[s : s + L][None], toks[s + 1 : s + L + 1][None]
            nll = model.token_nll(x, y)[0].double()
            keep = slice(0, L) if s == 0 else slice(L - S, L)
            total += float(nll[keep].sum())
            count += nll[keep].numel()
    assert r.tokens == count == M
    assert r.val_loss == pytest.approx(total / count, rel=1e-6)


def _uniform_luts(v: int):
    from golfpack.tokenizer import ByteLUTs

    return ByteLUTs(torch.ones(v, dtype=torch.int16), torch.zeros(v, dtype=torch.bool), torch.zeros(v, dtype=torch.bool))


def test_taleef_upstream_schema(taleef_pt, val_shard, sp1024_model):
    sd = torch.load(taleef_pt, map_location="cpu", weights_only=True)
    assert sd["tok_emb.weight"].dtype == torch.bfloat16 and sd["blocks.0.mlp.fc.weight"].dtype == torch.float32
    r = evaluate_path(taleef_pt, val=str(val_shard), tokenizer=sp1024_model, seq_len=256, max_tokens=N_TOKENS)
    assert isinstance(r, EvalResult) and r.tokens == 65_536
    assert r.val_bpb == pytest.approx(4.025, abs=1e-3) and r.val_loss == pytest.approx(6.808, abs=1e-3)
    d = r.to_dict()
    assert {"val_loss", "val_bpb", "tokens", "bytes", "seconds", "tokens_per_s"} <= set(d)
    assert d["tokens_per_s"] > 0


def test_out_of_vocab_tokens_rejected(sp_luts, nolanvild):
    toks = np.zeros(600, dtype=np.int64)
    toks[300] = 1500
    with pytest.raises(GolfpackError, match="id 1500, outside the tokenizer's 0..1023"):
        evaluate(nolanvild, toks, sp_luts, seq_len=256)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_close_to_cpu(taleef_pt, val_shard, sp1024_model):
    kw = dict(val=str(val_shard), tokenizer=sp1024_model, seq_len=256, max_tokens=N_TOKENS)
    cpu = evaluate_path(taleef_pt, device="cpu", **kw)
    gpu = evaluate_path(taleef_pt, device="cuda", **kw)
    assert gpu.tokens == cpu.tokens and gpu.bytes == cpu.bytes
    assert gpu.val_bpb == pytest.approx(cpu.val_bpb, abs=5e-3)
