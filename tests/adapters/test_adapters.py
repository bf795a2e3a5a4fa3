"""The adapter protocol: building a user's model from a file, its logits, and the linear layers found for GPTQ."""

from __future__ import annotations

import numpy as np
import torch

from golfpack.adapters import BASELINE, LanguageModel, load_adapter
from golfpack.formats.checkpoint import load_state_dict
from golfpack.loading import infer_config
from golfpack.model import build_model
from golfpack.packer import calibration as C
from golfpack.packer.hessian import _baseline_weight_inputs, collect_hessians, weight_inputs
from tests.adapters.conftest import FOREIGN


def test_file_adapter_builds_the_checkpoint_with_its_own_keys(foreign_ckpt) -> None:
    sd = torch.load(foreign_ckpt)
    ad = load_adapter(str(FOREIGN))
    assert ad.name == "foreign_lm.py:build_model" and len(ad.sha256) == 64
    assert ad.meta() == {"model_adapter": "foreign_lm.py:build_model", "model_sha256": ad.sha256}
    assert BASELINE.meta() == {}  # baseline artifacts keep today's header bytes
    lm = ad.build(sd)
    assert isinstance(lm, LanguageModel) and lm.vocab_size == 1024 and not lm.kv_cache
    assert list(lm.state_dict()) == list(sd) and all(torch.equal(lm.state_dict()[k], sd[k]) for k in sd)
    ids = torch.randint(0, 1024, (2, 16))
    assert torch.equal(lm.logits(ids), lm.net(ids))
    # the class form: ForeignLM built from the file's Hyperparameters defaults
    cls = load_adapter(f"{FOREIGN}:ForeignLM")
    assert cls.name == "foreign_lm.py:ForeignLM" and torch.equal(cls.build(sd).logits(ids), lm.logits(ids))
    assert load_adapter(str(FOREIGN)) is ad  # imported once per file content


def test_linear_layers_are_found_by_parameter_identity(foreign_ckpt) -> None:
    lm = load_adapter(str(FOREIGN)).build(torch.load(foreign_ckpt))
    feeds = weight_inputs(lm)
    want = {f"blocks.{i}.{n}.weight" for i in (0, 1) for n in ("qkv", "proj", "gate_up", "down")} | {"lm_head.weight"}
    assert set(feeds) == want  # nn.Linear and the CastedLinear subclass; embeddings have no linear input
    assert all(side == "input" for _, side in feeds.values())


def test_a_shared_block_accumulates_every_call_into_one_hessian(foreign_ckpt) -> None:
    lm = load_adapter(str(FOREIGN)).build(torch.load(foreign_ckpt))
    batch = C.make_batch(np.random.default_rng(0).integers(0, 1024, size=3 * 33), 3, 32)
    seen: list[torch.Tensor] = []
    h = lm.blocks[0].qkv.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().reshape(-1, 64).double()))
    with torch.no_grad():
        lm.logits(batch.inputs)
    h.remove()
    assert len(seen) == 3  # the loop calls block 0 three times
    x = torch.cat(seen)
    H = collect_hessians(lm, batch, ["blocks.0.qkv.weight"], micro=8)["blocks.0.qkv.weight"]
    assert torch.allclose(H, 2.0 / x.shape[0] * x.T @ x, rtol=1e-9, atol=1e-12)


def test_named_extra_input_feeds_a_tied_head(tmp_path, foreign_ckpt) -> None:
    """A head computed with F.linear(x, tok_emb.weight) has no module to hook: the file names its input."""
    f = tmp_path / "tied.py"
    f.write_text(FOREIGN.read_text() + '''
class Tied(ForeignLM):
    def __init__(self):
        super().__init__()
        del self.lm_head
        self.final_norm = torch.nn.Identity()

    def forward(self, input_ids):
        prev = F.pad(input_ids[:, :-1], (1, 0))
        x = self.tok_emb(input_ids) + self.bigram((prev * 1009 + input_ids) % self.buckets)
        ve = self.value_emb(input_ids)
        for _ in range(self.loops):
            for blk in self.blocks:
                x = blk(x, ve)
        return F.linear(self.final_norm(F.rms_norm(x, (x.size(-1),))), self.tok_emb.weight).float()


HESSIAN_INPUTS = {"tok_emb.weight": "final_norm"}
''')
    sd = {k: v for k, v in torch.load(foreign_ckpt).items() if k != "lm_head.weight"}
    lm = load_adapter(f"{f}:Tied").build(sd)
    feeds = weight_inputs(lm)
    assert feeds["tok_emb.weight"] == (lm.final_norm, "output") and "bigram.weight" not in feeds
    batch = C.make_batch(np.random.default_rng(1).integers(0, 1024, size=2 * 17), 2, 16)
    out: list[torch.Tensor] = []
    h = lm.final_norm.register_forward_hook(lambda m, a, o: out.append(o.detach().reshape(-1, 64).double()))
    H = collect_hessians(lm, batch, ["tok_emb.weight"])["tok_emb.weight"]
    h.remove()
    assert torch.allclose(H, 2.0 / out[0].shape[0] * out[0].T @ out[0], rtol=1e-9, atol=1e-12)


def test_baseline_hessians_equal_the_hard_coded_path(nolanvild_pt) -> None:
    sd = load_state_dict(nolanvild_pt)
    model = build_model(infer_config(sd, activation="relu3"), sd)
    old = _baseline_weight_inputs(model)
    assert set(weight_inputs(model)) == set(old) and len(old) == 19
    batch = C.make_batch(np.random.default_rng(0).integers(0, 1024, size=4 * 65), 4, 64)
    new_h = collect_hessians(model, batch, micro=3)
    old_h = collect_hessians(model, batch, micro=3, feeds=old)
    assert set(new_h) == set(old_h)
    for n in old_h:
        assert torch.allclose(new_h[n], old_h[n], rtol=0, atol=1e-6) and torch.equal(new_h[n], old_h[n]), n


def test_self_calibration_samples_through_the_adapter_without_a_cache(foreign_ckpt, capsys) -> None:
    lm = load_adapter(str(FOREIGN)).build(torch.load(foreign_ckpt))
    toks = C.self_tokens(lm, sequences=3, length=8, seed=0, bos=1, progress=True)
    assert toks.shape == (3 * 9,) and (toks[::9] == 1).all() and int(toks.max()) < 1024
    assert np.array_equal(toks, C.self_tokens(lm, sequences=3, length=8, seed=0, bos=1))  # seeded
    assert "no KV cache: recomputing each prefix" in capsys.readouterr().err
    # recomputation samples what full forwards say: the first sampled token follows BOS's distribution
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(lm.logits(torch.ones((1, 1), dtype=torch.long))[:, -1], -1)
    assert int(torch.multinomial(p, 1, generator=g)) == int(toks[1])


def test_a_json_config_reaches_name_and_is_named_in_the_header(foreign_ckpt, tmp_path) -> None:
    import json

    import pytest

    from golfpack.errors import UsageError

    sd = torch.load(foreign_ckpt)
    same, two = tmp_path / "loops3.json", tmp_path / "loops2.json"
    same.write_text(json.dumps({"loops": 3}))
    two.write_text(json.dumps({"loops": 2}))
    plain = load_adapter(str(FOREIGN))
    ad3, ad2 = load_adapter(f"{FOREIGN}@{same}"), load_adapter(f"{FOREIGN}:build_model@{two}")
    assert ad3.config == {"loops": 3} and ad3.module is plain.module  # the code is imported once
    assert ad3.meta()["model_config_sha256"] == __import__("hashlib").sha256(same.read_bytes()).hexdigest()
    assert "model_config_sha256" not in plain.meta()
    ids = torch.randint(0, 1024, (2, 16))
    assert torch.equal(ad3.build(sd).logits(ids), plain.build(sd).logits(ids))  # loops=3 is the default
    assert ad2.build(sd).net.loops == 2 and not torch.equal(ad2.build(sd).logits(ids), plain.build(sd).logits(ids))
    for text, msg in (("[1, 2]", "must hold a JSON object"), ("{bad", "not valid JSON"), ('{"x": NaN}', "not valid JSON")):
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(UsageError, match=msg) as e:
            load_adapter(f"{FOREIGN}@{bad}")
        assert str(bad) in str(e.value) and e.value.param == "model"
    with pytest.raises(UsageError, match="model config .*: not found"):
        load_adapter(f"{FOREIGN}@{tmp_path / 'missing.json'}")
