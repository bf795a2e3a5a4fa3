"""A layout that uses every new spec form (SDClip, hmse, group-wise scales, quantized sub-scales, LQER, each with GPTQ) replays through
`golfpack pack --policy` to the search's bytes exactly."""

from __future__ import annotations

import itertools

from click.testing import CliRunner

from golfpack.budget import SearchConfig, write_policy
from golfpack.formats.qgv3 import decode_qgv3
from golfpack.formats.spec import TensorSpec
from golfpack.packer.pack import DEFAULT_CODEC

NEW_SPECS = ["int6:sd12", "int5:g32", "int4:g32:sd12+gptq", "int4:g32+gptq+out3", "int6:sd12+gptq", "int5:g32:mse", "int4:hmse+gptq",
             "int5:hmse", "int4:sd12+lqer4", "int5:g32+gptq+lqer2", "int5:g32s6", "int4:g32s6:sd12+gptq", "int6:g64s6:mse"]


def test_replay_of_every_new_spec_is_byte_identical(small_ckpt, sp1024_model, tmp_path):
    from golfpack.budget.problem import load_problem
    from golfpack.cli import main

    cfg = SearchConfig(budget=10**6, calib="pydoc", tokenizer=str(sp1024_model), bits=(4,), clips=("quantile",), calib_seq=64,
                       gptq_batch=4, progress=False)
    p = load_problem(small_ckpt, cfg)
    p.pin_calibration("pydoc")
    matrices = [n for n, c in p.candidates.items() if any(s.gptq for s in c)]
    assert len(matrices) >= len(NEW_SPECS)
    cycle = itertools.cycle(NEW_SPECS)
    specs = {n: (TensorSpec.parse(next(cycle)) if n in matrices else c[0]) for n, c in p.candidates.items()}
    assert {s.label() for s in specs.values()} >= set(NEW_SPECS)
    data = p.encode_specs(specs, DEFAULT_CODEC)
    assert {r.spec.label() for r in decode_qgv3(data).records} >= set(NEW_SPECS)
    write_policy(tmp_path / "n.policy.json", p.policy_of(specs))
    r = CliRunner().invoke(main, ["pack", str(small_ckpt), "--policy", str(tmp_path / "n.policy.json"), "--tokenizer", str(sp1024_model),
                                  "-o", str(tmp_path / "n.qg3")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "n.qg3").read_bytes() == data
