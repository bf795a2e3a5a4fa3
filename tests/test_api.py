"""The public API (`import golfpack`): every name resolves, calls validate their arguments, results are typed."""

from __future__ import annotations

import numpy as np
import pytest

import golfpack as gp
from golfpack import BudgetError, FormatError, GolfpackError, UsageError


def test_every_public_name_resolves() -> None:
    for name in gp.__all__:
        assert getattr(gp, name) is not None, name
    assert isinstance(gp.__version__, str)
    with pytest.raises(AttributeError):
        gp.no_such_thing  # noqa: B018


def test_error_types_are_one_hierarchy() -> None:
    for cls in (UsageError, FormatError, BudgetError, gp.DataError):
        assert issubclass(cls, GolfpackError)
    e = FormatError("bad magic", path="x.qg3", offset=0)
    assert str(e) == "x.qg3: at byte 0: bad magic" and e.path == "x.qg3" and e.offset == 0 and e.detail == "bad magic"
    assert UsageError("n must be positive", param="n").param == "n"


def test_pack_from_path_and_from_loaded_model_store_the_same_tensors(nolanvild_pt, tmp_path) -> None:
    m = gp.load(nolanvild_pt)
    assert m.kind == "raw" and m.config is not None
    a = gp.pack(nolanvild_pt, "int6+tok8")
    b = gp.pack(m, "int6+tok8")
    assert isinstance(a, gp.Artifact) and a.policy.name == "int6+tok8"
    assert [r.name for r in a.records] == [r.name for r in b.records] == list(m.state_dict)
    for ra, rb in zip(a.records, b.records):
        assert ra.spec == rb.spec
        for x, y in ((ra.q, rb.q), (ra.scales, rb.scales), (ra.data, rb.data)):
            assert (x is None and y is None) or np.array_equal(x, y)
    out = a.save(tmp_path / "m.qg3")
    assert out.read_bytes() == a.data
    back = gp.load(out)
    assert back.kind == "qgv3" and set(back.state_dict) == set(m.state_dict)


def test_pack_checks_its_arguments(nolanvild_pt) -> None:
    with pytest.raises(UsageError) as e:
        gp.pack(nolanvild_pt, 6)  # type: ignore[arg-type]
    assert e.value.param == "policy"
    with pytest.raises(UsageError) as e:
        gp.pack(12345, "int8")  # type: ignore[arg-type]
    assert e.value.param == "model"
    with pytest.raises(BudgetError, match="over budget"):
        gp.pack(nolanvild_pt, "int6+tok8", budget=100_000)
    with pytest.raises(GolfpackError, match="unknown policy"):
        gp.pack(nolanvild_pt, "int4ever")


def test_evaluate_an_in_memory_artifact_equals_its_saved_file(nolanvild_pt, val_shard, sp1024_model, tmp_path) -> None:
    art = gp.pack(nolanvild_pt, "int6")
    kw = dict(val=str(val_shard), tokenizer=sp1024_model, seq_len=256, max_tokens=4097)
    mem = gp.evaluate(art, **kw)
    disk = gp.evaluate(art.save(tmp_path / "a.qg3"), **kw)
    assert isinstance(mem, gp.EvalResult)
    assert mem.tokens == disk.tokens == 4096 and mem.val_bpb == disk.val_bpb
    raw = gp.evaluate(gp.load(nolanvild_pt), **kw)
    assert raw.val_bpb < mem.val_bpb  # int6 costs something; the raw model is the reference


def test_verify_returns_a_typed_report(nolanvild_pt, tmp_path) -> None:
    path = gp.pack(nolanvild_pt, "int8").save(tmp_path / "a.qg3")
    rep = gp.verify(path, against=nolanvild_pt)
    assert isinstance(rep, gp.VerifyReport)
    assert rep.ok and rep.problems == () and rep.kind == "qgv3" and rep.digests_checked == rep.tensors
    assert 0 < rep.max_abs_err < 0.01 and rep.val_bpb is None
    assert rep.to_dict()["ok"] is True
    with pytest.raises(UsageError) as e:
        gp.verify(path, val="x*.bin")
    assert e.value.param == "tokenizer"


def test_search_stays_the_api_function_after_the_package_is_imported() -> None:
    # the budget-search package must not shadow `golfpack.search` (a submodule import sets the parent's attribute)
    import golfpack.budget  # noqa: F401
    import golfpack.budget.run  # noqa: F401

    assert callable(gp.search) and gp.search.__module__ == "golfpack.api"
    with pytest.raises(UsageError) as e:
        gp.search("x.pt", gp.SearchConfig(budget=1000), budget=5)
    assert e.value.param == "config"
