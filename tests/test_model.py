import pytest
import torch
import torch.nn.functional as F

from golfpack.formats.checkpoint import load_state_dict
from golfpack.loading import expected_shapes, infer_config
from golfpack.model import GPT, ModelConfig, build_model, count_params

SMALL = ModelConfig(vocab_size=64, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2, mlp_hidden=64)


def test_state_dict_keys_and_shapes_match_schema():
    sd = GPT(SMALL).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_shapes(SMALL)
    assert not any("inv_freq" in k or "rotary" in k for k in sd)  # RoPE tables are never stored
    assert sum(v.numel() for v in sd.values()) == count_params(SMALL)


def test_config_validation_messages():
    with pytest.raises(ValueError, match="divisible by num_kv_heads"):
        SMALL.replace(num_kv_heads=3)
    with pytest.raises(ValueError, match="activation must be one of"):
        SMALL.replace(activation="gelu")
    assert ModelConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ValueError, match="unknown ModelConfig fields: bogus"):
        ModelConfig.from_dict({**SMALL.to_dict(), "bogus": 1})


@pytest.mark.parametrize("act, fn", [
    ("relu2", lambda h: torch.relu(h) ** 2),
    ("relu3", lambda h: torch.relu(h) ** 3),
    ("leaky_relu2", lambda h: F.leaky_relu(h, 0.5) ** 2),
])
def test_mlp_activation(act, fn):
    torch.manual_seed(0)
    m = GPT(SMALL.replace(activation=act)).blocks[0].mlp
    torch.nn.init.normal_(m.proj.weight)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(m(x), fn(x @ m.fc.weight.T) @ m.proj.weight.T)


def test_forward_is_mean_of_token_nll_and_causal():
    torch.manual_seed(0)
    model = GPT(SMALL).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    ids = torch.randint(0, 64, (2, 16))
    tgt = torch.randint(0, 64, (2, 16))
    nll = model.token_nll(ids, tgt)
    assert nll.shape == (2, 16) and nll.dtype == torch.float32
    torch.testing.assert_close(model(ids, tgt), nll.mean())
    ids2 = ids.clone()
    ids2[:, 10:] = (ids2[:, 10:] + 1) % 64  # changing the future must not change the past
    torch.testing.assert_close(model.token_nll(ids2, tgt)[:, :10], nll[:, :10])
    assert (model.logits(ids).abs() <= SMALL.logit_softcap).all()


def test_rope_base_changes_output_and_is_fp32():
    torch.manual_seed(0)
    a = GPT(SMALL)
    b = GPT(SMALL.replace(rope_base=500.0))
    b.load_state_dict(a.state_dict())
    for p in a.parameters():
        torch.nn.init.normal_(p, std=0.2)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 64, (1, 32))
    assert not torch.allclose(a.logits(ids), b.logits(ids))
    assert a.blocks[0].attn.rotary.inv_freq.dtype == torch.float32


def test_real_checkpoint_loads_and_predicts(nolanvild_pt, val_shard):
    from golfpack.formats.shards import read_shard

    sd = load_state_dict(nolanvild_pt)
    model = build_model(infer_config(sd, activation="relu3"), sd).eval()
    toks = torch.from_numpy(read_shard(val_shard)[:257].astype("int64"))
    with torch.inference_mode():
        loss = model(toks[:-1][None], toks[1:][None]).item()
    assert 3.5 < loss < 5.5  # trained model: well under uniform ln(1024) = 6.93


def test_kv_cache_decoding_matches_full_recompute() -> None:
    """generate() feeds one token at a time through the KV cache; every step's logits must equal a
    full forward over the whole prefix (GQA, RoPE offsets, U-Net skips, resid_mix with x0 included)."""
    from golfpack.model import LayerCache

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2, activation="relu3")
    m = build_model(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))  # zero-init projections would hide attention bugs
    ids = torch.randint(0, 64, (2, 12))
    cache = [LayerCache() for _ in m.blocks]
    with torch.no_grad():
        full = m.logits(ids)
        step = [m.logits(ids[:, :5], cache)]
        for t in range(5, 12):
            step.append(m.logits(ids[:, t : t + 1], cache))
    assert torch.allclose(torch.cat(step, dim=1), full, atol=1e-5)
    assert cache[0].length == 12 and cache[0].k.shape == (2, 2, 12, 8)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    out = m.generate(ids[:, :1], 20, generator=g1)
    assert out.shape == (2, 21) and torch.equal(out[:, :1], ids[:, :1])
    assert torch.equal(out, m.generate(ids[:, :1], 20, generator=g2))  # seeded: reproducible
    with pytest.raises(ValueError, match="one token per step"):
        m.logits(ids[:, :3], cache)


def test_preallocated_kv_cache_decodes_like_the_growing_one() -> None:
    """LayerCache(capacity=N) writes each step into buffers allocated once (no per-token torch.cat); past its
    capacity it falls back to growing. Same logits either way, and generate() samples the same tokens."""
    from golfpack.model import LayerCache

    torch.manual_seed(0)
    m = build_model(ModelConfig(vocab_size=64, num_layers=3, model_dim=32, num_heads=4, num_kv_heads=2))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.randint(0, 64, (2, 12))
    outs = []
    for cap in (0, 8, 12):  # growing, preallocated then overflowing, preallocated exactly
        cache = [LayerCache(capacity=cap) for _ in m.blocks]
        with torch.no_grad():
            step = [m.logits(ids[:, :5], cache)] + [m.logits(ids[:, t : t + 1], cache) for t in range(5, 12)]
        assert cache[0].length == 12 and cache[0].k is not None and cache[0].k.shape[2] >= 12
        outs.append(torch.cat(step, dim=1))
    assert torch.allclose(outs[0], outs[1], atol=1e-6) and torch.allclose(outs[0], outs[2], atol=1e-6)
    ticks = []
    out = m.generate(ids[:, :1], 9, generator=torch.Generator().manual_seed(3), on_step=lambda: ticks.append(1))
    assert len(ticks) == 9 and out.shape == (2, 10)
