import pytest
import torch

from golfpack.errors import GolfpackError
from golfpack.formats.checkpoint import load_state_dict
from golfpack.loading import infer_config
from golfpack.model import GPT, ModelConfig, count_params


def test_nolanvild_config(nolanvild_pt):
    sd = load_state_dict(nolanvild_pt)
    cfg = infer_config(sd, activation="relu3")
    assert (cfg.num_layers, cfg.model_dim, cfg.num_heads, cfg.num_kv_heads, cfg.mlp_hidden) == (3, 128, 4, 2, 256)
    assert cfg.vocab_size == 1024 and cfg.tie_embeddings and cfg.skip_weights and cfg.activation == "relu3"
    assert sum(t.numel() for t in sd.values()) == 476_812 == count_params(cfg)


def test_taleef_config_keeps_dtype_mix(taleef_pt):
    sd = load_state_dict(taleef_pt)
    assert sd["tok_emb.weight"].dtype == torch.bfloat16
    cfg = infer_config(sd)
    assert (cfg.num_layers, cfg.model_dim, cfg.num_heads, cfg.num_kv_heads, cfg.mlp_hidden) == (2, 64, 4, 2, 64)
    assert count_params(cfg) == 107_080


def test_unknown_schema_lists_keys(ginferno_pt):
    sd = load_state_dict(ginferno_pt)
    with pytest.raises(GolfpackError) as e:
        infer_config(sd)
    assert "shared_blocks.0" in str(e.value) and "does not have" in str(e.value)


def test_shape_mismatch_is_named():
    cfg = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, mlp_hidden=64)
    sd = GPT(cfg).state_dict()
    sd["blocks.1.mlp.fc.weight"] = torch.zeros(65, 32)
    with pytest.raises(GolfpackError, match=r"blocks.1.mlp.fc.weight has shape \[65, 32\], expected \[64, 32\]"):
        infer_config(sd)
    del sd["blocks.1.attn.q_gain"]
    with pytest.raises(GolfpackError, match="missing blocks.1.attn.q_gain"):
        infer_config(sd)


def test_compile_prefix_and_untied_roundtrip(tmp_path):
    cfg = ModelConfig(vocab_size=64, num_layers=3, model_dim=32, num_heads=2, num_kv_heads=1, mlp_hidden=96,
                      tie_embeddings=False)
    sd = {"_orig_mod." + k: v for k, v in GPT(cfg).state_dict().items()}
    torch.save(sd, tmp_path / "m.pt")
    got = infer_config(load_state_dict(tmp_path / "m.pt"))
    assert got == cfg


def test_garbage_file_is_a_clear_error(tmp_path):
    p = tmp_path / "x.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(GolfpackError, match="cannot be read as a torch.save state dict"):
        load_state_dict(p)


def _small_sd():
    cfg = ModelConfig(vocab_size=64, num_layers=2, model_dim=32, num_heads=4, num_kv_heads=2, mlp_hidden=64)
    return GPT(cfg).state_dict()


@pytest.mark.parametrize("heads,msg", [
    (0, "num_heads must be positive, got 0"),
    (-2, "num_heads must be positive, got -2"),
    (3, "model_dim 32 is not divisible by num_heads 3"),
])
def test_bad_num_heads_override(heads, msg):
    with pytest.raises(GolfpackError, match=msg):
        infer_config(_small_sd(), num_heads=heads)


def test_empty_q_gain_and_kv_heads_not_dividing_heads():
    sd = _small_sd()
    sd["blocks.0.attn.q_gain"] = torch.zeros(0)
    with pytest.raises(GolfpackError, match="q_gain is empty, so the head count cannot be inferred: pass num_heads"):
        infer_config(sd)
    sd = _small_sd()
    sd["blocks.0.attn.c_k.weight"] = torch.zeros(24, 32)  # 3 kv heads of head_dim 8 cannot serve 4 query heads
    with pytest.raises(GolfpackError, match=r"3 kv heads \(c_k rows 24 / head_dim 8\) do not divide num_heads 4"):
        infer_config(sd)
    sd["blocks.0.attn.c_k.weight"] = torch.zeros(0, 32)
    with pytest.raises(GolfpackError, match="c_k rows 0 are not a positive multiple of head_dim 8"):
        infer_config(sd)


@pytest.mark.parametrize("kind", ["fp16", "mix"])
def test_half_precision_checkpoint_loads_and_scores(kind, nolanvild_pt, val_shard, sp1024_model, tmp_path):
    """fp16 (or an fp16/bf16/fp32 mix) on disk: same inferred config, scores within 1e-3 of the fp32 file."""
    from golfpack.evaluator.api import evaluate_path
    from golfpack.formats.checkpoint import normalize_state_dict

    sd = load_state_dict(nolanvild_pt)
    if kind == "fp16":
        half = {k: v.half() for k, v in sd.items()}
    else:  # embedding bf16 (as the upstream baseline stores it), matrices fp16, 1-D/control tensors fp32
        half = {k: v.bfloat16() if k == "tok_emb.weight" else (v.half() if v.ndim == 2 and "resid_mix" not in k else v)
                for k, v in sd.items()}
    path = tmp_path / f"{kind}.pt"
    torch.save(half, path)
    back = load_state_dict(path)
    assert back["blocks.0.attn.c_q.weight"].dtype == torch.float16
    assert back["tok_emb.weight"].dtype == (torch.float16 if kind == "fp16" else torch.bfloat16)
    assert back["blocks.0.attn.q_gain"].dtype == (torch.float16 if kind == "fp16" else torch.float32)
    assert infer_config(back, activation="relu3") == infer_config(sd, activation="relu3")
    assert normalize_state_dict(half).keys() == sd.keys()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # shared CI box: small model, one thread is faster
    try:
        kw = dict(val=str(val_shard), tokenizer=sp1024_model, seq_len=256, max_tokens=16_385, activation="relu3")
        ref, got = evaluate_path(nolanvild_pt, **kw), evaluate_path(path, **kw)
    finally:
        torch.set_num_threads(threads)
    assert got.tokens == ref.tokens == 16_384 and got.bytes == ref.bytes
    assert got.val_bpb != ref.val_bpb  # the rounding really happened...
    assert abs(got.val_bpb - ref.val_bpb) < 1e-3  # ...and costs almost nothing


def test_torch_load_helpers_are_bounded_and_weights_only(tmp_path):
    """One torch.load for golfpack: CPU, weights_only (a pickled object is refused), size-capped before reading."""
    import io
    import pickle

    from golfpack.errors import FormatError
    from golfpack.formats.checkpoint import torch_load_bytes, torch_load_path

    buf = io.BytesIO()
    torch.save({"a": torch.arange(3)}, buf)
    good = buf.getvalue()
    assert torch.equal(torch_load_bytes(good)["a"], torch.arange(3))
    p = tmp_path / "a.pt"
    p.write_bytes(good)
    assert torch.equal(torch_load_path(p)["a"], torch.arange(3))
    with pytest.raises(FormatError, match="over the 100-byte limit") as e:
        torch_load_path(p, max_bytes=100)
    assert e.value.path == str(p)
    with pytest.raises(FormatError, match="over the 100-byte limit"):
        torch_load_bytes(good, max_bytes=100)

    class Evil:  # a pickle that would run code on load without weights_only
        def __reduce__(self):
            return (print, ("pwned",))

    buf = io.BytesIO()
    torch.save({"x": Evil()}, buf, pickle_module=pickle)
    with pytest.raises(FormatError, match="not a torch.save object") as e:
        torch_load_bytes(buf.getvalue(), path="evil.pt")
    assert e.value.path == "evil.pt" and str(e.value).startswith("evil.pt: not a torch.save object (")
    with pytest.raises(FormatError, match="file not found"):
        torch_load_path(tmp_path / "missing.pt")


def test_no_torch_load_outside_the_helper():
    """Every torch.load in golfpack's source goes through formats/checkpoint.py."""
    import ast
    from pathlib import Path

    import golfpack

    root = Path(golfpack.__file__).parent
    calls = []
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr == "load" and isinstance(node.value, ast.Name) and node.value.id == "torch":
                calls.append(f"{f.relative_to(root)}:{node.lineno}")
    assert calls and all(c.startswith("formats/checkpoint.py:") for c in calls), calls
