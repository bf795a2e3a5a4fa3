"""`model_code=` on the public API: pack (path and LoadedModel), evaluate, verify, search."""

from __future__ import annotations

import pytest
import torch

import golfpack as gp
from golfpack.errors import UsageError
from golfpack.formats.qgv3 import decode_qgv3
from tests.adapters.conftest import FOREIGN


def test_pack_evaluate_verify_with_model_code(foreign_ckpt, calib_shard, sp1024_model, val_shard) -> None:
    art = gp.pack(foreign_ckpt, "int6", model_code=FOREIGN, overrides=["blocks.*.qkv.weight=int5+gptq"], calib=calib_shard)
    head = decode_qgv3(art.data)
    assert head.meta["model_adapter"] == "foreign_lm.py:build_model" and head.config is None
    assert {e["name"]: e["spec"] for e in head.header["tensors"]}["blocks.1.qkv.weight"] == "int5+gptq"
    # a LoadedModel packs to the same tensors (its header meta differs: no source file)
    art2 = gp.pack(gp.load(foreign_ckpt), "int6", model_code=FOREIGN, overrides=["blocks.*.qkv.weight=int5+gptq"],
                   calib=calib_shard)
    assert [r.payload_bytes() for r in art2.records] == [r.payload_bytes() for r in art.records]
    assert decode_qgv3(art2.data).meta["model_sha256"] == head.meta["model_sha256"]
    kw = dict(val=str(val_shard), tokenizer=sp1024_model, seq_len=64, max_tokens=1025)
    r = gp.evaluate(art, model_code=FOREIGN, **kw)
    raw = gp.evaluate(gp.load(foreign_ckpt), model_code=FOREIGN, **kw)
    assert r.tokens == raw.tokens == 1024 and abs(r.val_bpb - raw.val_bpb) < 0.05
    rep = gp.verify(art, against=foreign_ckpt, model_code=FOREIGN, **kw)
    assert rep.ok and rep.val_bpb == pytest.approx(r.val_bpb, abs=1e-9) and rep.val_bpb_raw == pytest.approx(raw.val_bpb, abs=1e-9)
    with pytest.raises(UsageError, match="model_code='FILE.py"):  # without the code, say what to pass
        gp.evaluate(gp.load(foreign_ckpt), **kw)
    assert torch.equal(gp.load(foreign_ckpt).state_dict["lm_head.weight"], torch.load(foreign_ckpt)["lm_head.weight"])
