"""pack / verify / inspect end to end (needs the QGv3 format module), and CLI error paths."""

from __future__ import annotations

import json
import os

import pytest
import torch
from click.testing import CliRunner

from golfpack._version import __version__
from golfpack.cli import main
from golfpack.errors import GolfpackError, UsageError
from golfpack.formats.checkpoint import load_state_dict


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def _one_error_line(res) -> str:
    assert res.exit_code != 0
    out = res.output.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("Error: "), res.output
    assert "Traceback" not in res.output
    return out[0]


# ------------------------------------------------------------------------------------------------
# error paths that need no artifact format


def test_bad_policy_name(nolanvild_pt, tmp_path) -> None:
    line = _one_error_line(_run("pack", str(nolanvild_pt), "--policy", "int7", "-o", str(tmp_path / "a.qg3")))
    assert "unknown policy 'int7'" in line and "int6+tok8" in line
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("bad", ["blocks.*", "blocks.*=int9", "blocks.*=float8", "=int5"])
def test_bad_set(nolanvild_pt, tmp_path, bad: str) -> None:
    line = _one_error_line(_run("pack", str(nolanvild_pt), "--set", bad, "-o", str(tmp_path / "a.qg3")))
    assert "--set" in line or "bits" in line or "spec" in line
    assert not list(tmp_path.iterdir())


def test_set_that_matches_nothing_is_refused(nolanvild_pt, tmp_path) -> None:
    line = _one_error_line(_run("pack", str(nolanvild_pt), "--set", "block.*.mlp.fc.weight=int5", "--activation", "relu3", "-o", str(tmp_path / "a.qg3")))
    assert "'block.*.mlp.fc.weight' matches no tensor" in line and "names look like skip_weights, tok_emb.weight, blocks.0.attn_scale, ..." in line
    assert not list(tmp_path.iterdir())


def test_missing_files(tmp_path) -> None:
    line = _one_error_line(_run("pack", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "a.qg3")))
    assert "nope.pt" in line and "not found" in line
    line = _one_error_line(_run("verify", str(tmp_path / "nope.qg3")))
    assert "not found" in line
    line = _one_error_line(_run("inspect", str(tmp_path / "nope.qg3")))
    assert "not found" in line


def test_missing_code_file_and_bad_policy_file(nolanvild_pt, tmp_path) -> None:
    line = _one_error_line(_run("pack", str(nolanvild_pt), "--code", str(tmp_path / "train_gpt.py"), "-o", str(tmp_path / "a.qg3")))
    assert "--code" in line and "not found" in line
    bad = tmp_path / "p.toml"
    bad.write_text("[[rules]]\nspec = 'int6'\nwhat = 1\n")
    line = _one_error_line(_run("pack", str(nolanvild_pt), "--policy", str(bad), "-o", str(tmp_path / "a.qg3")))
    assert "unknown key" in line


def test_not_a_checkpoint(tmp_path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00\x01garbage" * 10)
    line = _one_error_line(_run("pack", str(junk), "-o", str(tmp_path / "a.qg3")))
    assert "unrecognised" in line or "not a" in line


# ------------------------------------------------------------------------------------------------
# with the QGv3 format


@pytest.fixture()
def qgv3():
    import golfpack.formats.qgv3

    return golfpack.formats.qgv3


def test_pack_refuses_over_budget_and_writes_nothing(qgv3, nolanvild_pt, tmp_path) -> None:
    out = tmp_path / "model.qg3"
    code = tmp_path / "train_gpt.py"
    code.write_bytes(b"x" * 50_000)
    res = _run("pack", str(nolanvild_pt), "--policy", "int6+tok8", "--budget", "200000", "--code", str(code), "-o", str(out))
    line = _one_error_line(res)
    assert "over budget" in line and "nothing written" in line
    assert list(tmp_path.iterdir()) == [code]  # no artifact, no temp file


def test_pack_dry_run_and_budget_accounting(qgv3, nolanvild_pt, tmp_path) -> None:
    code = tmp_path / "train_gpt.py"
    code.write_bytes(b"y" * 12_345)
    res = _run("pack", str(nolanvild_pt), "--dry-run", "--json", "--code", str(code), "--activation", "relu3")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["dry_run"] and rep["code_bytes"] == 12_345
    assert rep["total_bytes"] == rep["model_bytes"] + 12_345 and rep["headroom"] == 16_000_000 - rep["total_bytes"]
    assert rep["config"]["activation"] == "relu3"
    assert {t["spec"] for t in rep["tensors"]} == {"int6", "int8", "fp16"}
    assert list(tmp_path.iterdir()) == [code]
    # the dry-run byte total is exact: a real pack writes exactly that many bytes
    out = tmp_path / "m.qg3"
    res2 = _run("pack", str(nolanvild_pt), "--json", "--activation", "relu3", "-o", str(out))
    assert res2.exit_code == 0, res2.output
    assert out.stat().st_size == rep["model_bytes"]


def test_pack_verify_inspect_round_trip(qgv3, nolanvild_pt, tmp_path) -> None:
    from golfpack.loading import load_any
    from golfpack.packer.policy import Policy
    from golfpack.packer.quantize import fake_quantize

    out = tmp_path / "m.qg3"
    res = _run("pack", str(nolanvild_pt), "--policy", "int6+tok8", "--set", "blocks.0.mlp.fc.weight=int5:mse", "--activation", "relu3", "-o", str(out))
    assert res.exit_code == 0, res.output
    lm = load_any(out)
    assert lm.kind == "qgv3" and lm.config is not None and lm.config.activation == "relu3"
    sd = load_state_dict(nolanvild_pt)
    pol = Policy.from_dict(lm.artifact.policy)  # the stored policy replays the plan
    specs = pol.resolve(sd)
    assert specs["blocks.0.mlp.fc.weight"].label() == "int5:mse" and specs["blocks.1.mlp.fc.weight"].label() == "int6"
    for n, t in sd.items():
        assert torch.equal(lm.state_dict[n], fake_quantize(t, specs[n])), n
    v = _run("verify", str(out), "--against", str(nolanvild_pt), "--json")
    assert v.exit_code == 0, v.output
    rep = json.loads(v.output)
    assert rep["ok"] and rep["digests_checked"] == 32 and rep["digest_mismatches"] == []
    # the fresh process reports the same per-tensor error as dequantizing here, to the last bit
    errs = {n: float((fake_quantize(t, specs[n]).double() - t.double()).abs().max()) for n, t in sd.items()}
    rows = {r["name"]: r for r in rep["per_tensor"]}
    assert {n: rows[n]["max_abs_err"] for n in sd} == errs
    assert rep["max_abs_err"] == max(errs.values()) > 0
    ins = _run("inspect", str(out), "--json")
    assert ins.exit_code == 0, ins.output
    irep = json.loads(ins.output)
    assert irep["params"] == 476_812 and {g["group"] for g in irep["groups"]} == {"embedding", "attn", "mlp", "control"}
    # stored shares + header framing account for every byte of the file
    assert sum(t["stored_bytes"] for t in irep["tensors"]) + irep["overhead_bytes"] == pytest.approx(irep["bytes"], abs=1e-6)
    # raw bytes follow each stream's layout: int5/int6 levels at 1 byte (byte container) or bits/8 (dense),
    # plus one fp16 scale per row
    streams = {st["bits"]: st for st in lm.artifact.streams if st["kind"] == "levels"}
    per_level = {b: (1.0 if st["layout"] == "byte" else b / 8) for b, st in streams.items()}
    t = {r["name"]: r for r in irep["tensors"]}
    fc0, fc1 = t["blocks.0.mlp.fc.weight"], t["blocks.1.mlp.fc.weight"]
    assert fc0["raw_bytes"] == 256 * 128 * per_level[5] + 2 * 256
    assert fc1["raw_bytes"] == 256 * 128 * per_level[6] + 2 * 256


def test_inspect_plot_writes_a_png(qgv3, taleef_pt, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "t.qg3"
    assert _run("pack", str(taleef_pt), "-o", str(out)).exit_code == 0
    png = tmp_path / "bytes.png"
    res = _run("inspect", str(out), "--plot", str(png))
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_codec_best_keeps_the_per_stream_choice_when_it_wins(qgv3, taleef_pt, tmp_path) -> None:
    res = _run("pack", str(taleef_pt), "--codec", "best", "--json", "-o", str(tmp_path / "b.qg3"))
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    sizes = rep["codec_sizes"]
    assert "best" in sizes and {"lzma", "zlib"} <= set(sizes)
    assert rep["model_bytes"] == min(sizes.values()) == (tmp_path / "b.qg3").stat().st_size


@pytest.mark.slow  # ~45 s on a busy 2-core box: two full evals in a fresh process
def test_verify_eval_reports_the_fresh_load_gap(qgv3, nolanvild_pt, sp1024_model, val_shard, tmp_path) -> None:
    """int6+tok8/lzma on nolanvild, first 65,537 official val tokens: raw vs fresh-loaded artifact."""
    out = tmp_path / "n.qg3"
    assert _run("pack", str(nolanvild_pt), "--activation", "relu3", "-o", str(out)).exit_code == 0
    res = _run("verify", str(out), "--against", str(nolanvild_pt), "--eval", "--val", str(val_shard),
               "--tokenizer", str(sp1024_model), "--seq-len", "256", "--max-tokens", "65537", "--json")
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    pre, post = rep["pre"], rep["post"]
    assert pre["tokens"] == post["tokens"] == 65_536 and pre["bytes"] == post["bytes"]
    assert pre["val_bpb"] == pytest.approx(2.634927, abs=2e-6)  # the raw checkpoint, fp32 CPU
    assert rep["val_bpb_gap"] == pytest.approx(post["val_bpb"] - pre["val_bpb"], abs=1e-12)
    assert 0.003 < rep["val_bpb_gap"] < 0.008  # int6 with the baseline's quantile rule costs ~0.005 bpb here


def test_pack_legacy_ptz_input_and_int8_preset_exactness(qgv3, nolanvild_pt, nolanvild_ptz, tmp_path) -> None:
    from golfpack.formats.legacy import dequantize_int8_ptz, read_int8_ptz
    from golfpack.loading import load_any

    out = tmp_path / "int8.qg3"
    res = _run("pack", str(nolanvild_pt), "--policy", "int8", "-o", str(out))
    assert res.exit_code == 0, res.output
    shipped = dequantize_int8_ptz(read_int8_ptz(nolanvild_ptz))
    got = load_any(out).state_dict
    for n, t in shipped.items():
        assert torch.equal(got[n], t), n
    # a .ptz input is dequantized then packed
    out2 = tmp_path / "from_ptz.qg3"
    res = _run("pack", str(nolanvild_ptz), "--policy", "int8", "-o", str(out2))
    assert res.exit_code == 0, res.output
    got2 = load_any(out2).state_dict
    assert torch.equal(got2["blocks.0.attn.c_q.weight"], shipped["blocks.0.attn.c_q.weight"])


def test_corrupted_artifact_fails_verify(qgv3, taleef_pt, tmp_path) -> None:
    from golfpack.evaluator.verify import verify_artifact

    out = tmp_path / "t.qg3"
    assert _run("pack", str(taleef_pt), "-o", str(out)).exit_code == 0
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x55
    bad = tmp_path / "bad.qg3"
    bad.write_bytes(bytes(data))
    with pytest.raises(GolfpackError):
        verify_artifact(bad)


@pytest.mark.slow  # ~20 s: packs a large foreign checkpoint
def test_foreign_schema_needs_no_config_flag(qgv3, neo_ptz, tmp_path) -> None:
    res = _run("pack", str(neo_ptz), "-o", str(tmp_path / "n.qg3"))
    assert "--no-config" in _one_error_line(res)
    res = _run("pack", str(neo_ptz), "--no-config", "--json", "-o", str(tmp_path / "n.qg3"))
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["config"] is None
    assert os.path.getsize(tmp_path / "n.qg3") < 700_000


def test_inspect_shares_follow_each_streams_stored_bytes(tmp_path) -> None:
    """inspect's per-tensor stored bytes: every stream's stored bytes split over its tensors by their raw
    bytes in it, so the shares plus the header add up to the file; tensors of very different sizes in
    one stream get very different shares (an even split, or one by element count of the stream, fails)."""
    import json

    from golfpack.formats.qgv3 import decode_qgv3
    from golfpack.packer.pack import describe_artifact, pack_state_dict
    from golfpack.packer.policy import Policy

    g = torch.Generator().manual_seed(0)
    sd = {"big": torch.randn(96, 64, generator=g), "small": torch.randn(24, generator=g),
          "mid": torch.randn(16, 32, generator=g), "q": torch.randn(64, 64, generator=g)}
    policy = Policy.from_dict({"rules": [{"match": "q", "spec": "int6"}], "default": "fp16"})
    path = tmp_path / "a.qg3"
    path.write_bytes(pack_state_dict(sd, policy, codec="lzma").data)
    art = decode_qgv3(path.read_bytes())
    rep = describe_artifact(path)
    rows = {r["name"]: r for r in rep["tensors"]}

    assert rep["bytes"] == path.stat().st_size == art.total_bytes
    assert sum(r["stored_bytes"] for r in rows.values()) + rep["overhead_bytes"] == pytest.approx(rep["bytes"], abs=1e-6)
    assert sum(r["share"] for r in rows.values()) == pytest.approx(1 - rep["overhead_bytes"] / rep["bytes"], abs=1e-9)

    (fp16,) = [s for s in art.streams if s["kind"] == "passthrough"]
    assert sorted(fp16["tensors"]) == ["big", "mid", "small"]
    for name in fp16["tensors"]:
        raw = sd[name].numel() * 2  # fp16 values
        assert rows[name]["raw_bytes"] == raw
        assert rows[name]["stored_bytes"] == pytest.approx(fp16["stored_bytes"] * raw / fp16["raw_bytes"], rel=1e-12)
        assert rows[name]["share"] == pytest.approx(rows[name]["stored_bytes"] / rep["bytes"], rel=1e-12)
    # q alone holds the int6 levels stream and the scales stream: its share is exactly their stored bytes.
    own = [s for s in art.streams if s["tensors"] == ["q"]]
    assert {s["kind"] for s in own} == {"levels", "scales"}
    assert rows["q"]["stored_bytes"] == pytest.approx(sum(s["stored_bytes"] for s in own), abs=1e-9)
    assert rows["q"]["raw_bytes"] == 64 * 64 + 64 * 2  # one byte per level in a byte container + fp16 row scales
    groups = {gr["group"]: gr for gr in rep["groups"]}
    assert sum(gr["stored_bytes"] for gr in groups.values()) == pytest.approx(rep["bytes"] - rep["overhead_bytes"], abs=1e-6)

    res = _run("inspect", str(path), "--json")
    assert res.exit_code == 0, res.output
    cli = json.loads(res.output)
    assert [(r["name"], r["stored_bytes"], r["share"]) for r in cli["tensors"]] == \
        [(r["name"], r["stored_bytes"], r["share"]) for r in rep["tensors"]]
    assert cli["overhead_bytes"] == rep["overhead_bytes"]


def test_pack_best_in_parallel_gives_the_serial_bytes() -> None:
    """`--codec best` plans every codec on threads sharing one memoized pool: the same artifact, codec and
    per-codec sizes as one compression at a time (workers=1 runs each where it is asked for)."""
    from golfpack.formats.qgv3_plan import compressions
    from golfpack.packer.pack import pack_state_dict
    from golfpack.packer.policy import Policy

    g = torch.Generator().manual_seed(3)
    sd = {"a": torch.randn(128, 96, generator=g), "b": torch.randn(96, generator=g), "c": torch.randn(64, 64, generator=g)}
    policy = Policy.from_dict({"rules": [{"match": "a", "spec": "int6"}, {"match": "c", "spec": "int5:absmax"}],
                               "default": "fp16"})
    with compressions(1):
        serial = pack_state_dict(sd, policy, codec="best")
    par = pack_state_dict(sd, policy, codec="best")
    assert (par.data, par.codec, par.codec_sizes) == (serial.data, serial.codec, serial.codec_sizes)
    assert set(par.codec_sizes) >= {"raw", "zlib", "lzma", "best"} and par.codec_estimates == {}  # nothing sampled: all exact


@pytest.mark.slow  # ~13 s: `best` over a 1.1M-level stream, every codec in full where it may win
def test_pack_best_skips_whole_file_codecs_the_samples_rule_out() -> None:
    """A levels stream over TRIAL_BYTES is measured on samples: `best` then encodes in full only the per-stream
    choice and the single codecs within BEST_FULL_MARGIN of it; each one it skips really is bigger."""
    from golfpack.formats.qgv3_plan import TRIAL_BYTES
    from golfpack.packer import pack as P
    from golfpack.packer.policy import Policy

    g = torch.Generator().manual_seed(4)
    sd = {"w": torch.distributions.StudentT(5.0).sample((1100, 1024)) * torch.rand(1100, 1, generator=g).add(0.5),
          "b": torch.randn(1024, generator=g)}
    assert sd["w"].numel() > TRIAL_BYTES
    policy = Policy.from_dict({"rules": [{"match": "w", "spec": "int6"}], "default": "fp16"})
    art = P.pack_state_dict(sd, policy, codec="best")
    assert "best" in art.codec_sizes and {"raw", "zlib"} <= set(art.codec_estimates)
    assert art.model_bytes == min(art.codec_sizes.values())
    assert set(art.codec_sizes) | set(art.codec_estimates) == {*P.available_codecs(), "best", P.DEFAULT_CODEC}
    assert P.DEFAULT_CODEC in art.codec_sizes  # always encoded in full: best never loses to the default
    for c, est in art.codec_estimates.items():
        assert est > art.model_bytes, (c, est)
    for c in ("raw", "zlib"):  # the cheap ones, encoded in full: the skip was right (brotli/zstd q-max passes cost seconds)
        exact = len(P.encode(art.records, codec=c, config=None, policy=art.policy, meta={"golfpack_version": __version__}))
        assert exact > art.model_bytes * (1 + P.BEST_FULL_MARGIN), (c, exact)
    assert art.report()["codec_estimates"] == art.codec_estimates


def test_codec_sets_take_the_smaller_per_stream_and_bad_ones_are_refused() -> None:
    from golfpack.packer import pack as P
    from golfpack.packer.policy import Policy

    g = torch.Generator().manual_seed(5)
    sd = {"w": torch.randn(256, 128, generator=g), "b": torch.randn(128, generator=g)}
    policy = Policy.from_dict({"rules": [{"match": "w", "spec": "int6"}], "default": "fp16"})
    both = P.pack_state_dict(sd, policy, codec="lzma+rans")
    assert both.codec == "lzma+rans"
    assert both.model_bytes <= min(P.pack_state_dict(sd, policy, codec=c).model_bytes for c in ("lzma", "rans"))
    assert P.is_codec("lzma+rans") and P.is_codec("best") and not P.is_codec("LZMA") and not P.is_codec(None)
    with pytest.raises(UsageError, match="names a codec twice"):
        P.pack_state_dict(sd, policy, codec="rans+rans")
    with pytest.raises(UsageError, match="unknown or unavailable codec 'lzma\\+gzip'"):
        P.pack_state_dict(sd, policy, codec="lzma+gzip")
