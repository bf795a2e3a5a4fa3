"""The 10-line adapter of docs/models.md (and the README) makes a record-style train_gpt.py, whose forward
returns the loss, usable: logits that give the record's own loss, GPTQ Hessians for its tied head, eval."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import torch

from golfpack.adapters import load_adapter
from golfpack.packer import calibration as C
from golfpack.packer.hessian import collect_hessians, weight_inputs

REPO = Path(__file__).resolve().parents[2]


def docs_adapter(doc: Path) -> str:
    text = doc.read_text()
    m = re.search(r"<!-- adapter: record -->\n```python\n(.*?)```", text, re.S)
    assert m, f"{doc} has no record adapter block"
    return m.group(1)


def test_readme_shows_the_same_adapter_in_full() -> None:
    code = docs_adapter(REPO / "docs" / "models.md")
    assert docs_adapter(REPO / "README.md") == code
    assert len([ln for ln in code.splitlines() if ln.strip()]) <= 10


def test_the_docs_adapter_runs_a_record_train_gpt(tmp_path, sp1024_model, val_shard) -> None:
    shutil.copy(Path(__file__).with_name("record_train_gpt.py"), tmp_path / "train_gpt.py")
    (tmp_path / "adapter.py").write_text(docs_adapter(REPO / "docs" / "models.md"))
    ad = load_adapter(str(tmp_path / "adapter.py"))
    rec = ad.module.build_model  # the record's GPT class
    hp = ad.module.Hyperparameters
    torch.manual_seed(0)
    ref = rec(hp.vocab_size, hp.num_layers, hp.model_dim, hp.num_heads, hp.num_kv_heads, hp.mlp_mult, hp.tie_embeddings,
              hp.rope_base, hp.logit_softcap, hp.qk_gain_init)
    with torch.no_grad():
        for p in ref.parameters():
            p.normal_(0, 0.1)
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    lm = ad.build(sd)
    assert lm.vocab_size == 1024
    ids, tgt = torch.randint(0, 1024, (2, 32)), torch.randint(0, 1024, (2, 32))
    with torch.no_grad():
        assert torch.allclose(lm.token_nll(ids, tgt).mean(), ref(ids, tgt), rtol=1e-6, atol=1e-6)
    feeds = weight_inputs(lm)
    assert feeds["tok_emb.weight"] == (lm.final_norm, "output") and "blocks.1.mlp_proj.weight" in feeds
    batch = C.make_batch(np.random.default_rng(0).integers(0, 1024, size=2 * 33), 2, 32)
    H = collect_hessians(lm, batch)
    assert set(H) == set(feeds) and H["tok_emb.weight"].shape == (32, 32)
    from golfpack.evaluator.api import evaluate_path

    torch.save(sd, tmp_path / "final_model.pt")
    r = evaluate_path(tmp_path / "final_model.pt", val=str(val_shard), tokenizer=str(sp1024_model), seq_len=64,
                      max_tokens=257, model=str(tmp_path / "adapter.py"))
    assert r.tokens == 256 and r.model["adapter"] == "adapter.py:build_model" and np.isfinite(r.val_bpb)
