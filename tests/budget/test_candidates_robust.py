"""The search's candidate set: floor-free SDClip and group-wise specs on matrices, chosen per width, no explosion."""

from __future__ import annotations

import torch

from golfpack.budget.sensitivity import candidate_specs, regularize


def test_matrices_get_sdclip_and_sub_scaled_groups_at_every_width_with_and_without_gptq():
    labels = [s.label() for s in candidate_specs(torch.zeros(8, 256), bits=(6, 4), clips=("quantile", "mse"), gptq=True)]
    per_width = ["", "+gptq", ":mse", ":mse+gptq", ":sd12", ":sd12+gptq", ":g64", ":g64+gptq", ":g64s6", ":g64s6+gptq"]
    assert labels == ["fp32", "fp16", *(f"int{b}{x}" for b in (6, 4) for x in per_width)]
    # one group form on request
    one = candidate_specs(torch.zeros(8, 256), bits=(6,), clips=(), sd=None, subscales=(6,))
    assert [s.label() for s in one] == ["fp32", "fp16", "int6:g64s6"]
    # (clips + sd + groups x subscales) x 2 a width, linear in every knob
    assert len(candidate_specs(torch.zeros(8, 256), bits=(8, 7, 6, 5, 4), gptq=True, groups=(32, 64, 128))) == 2 + 5 * (2 + 1 + 3 * 2) * 2
    # vectors: no groups, no SDClip (one per-tensor scale); sd=None and groups=() give the old set back
    assert [s.label() for s in candidate_specs(torch.zeros(300), bits=(6,))] == ["fp32", "fp16", "int6", "int6:mse"]
    assert [s.label() for s in candidate_specs(torch.zeros(8, 256), bits=(6,), sd=None, groups=())] == ["fp32", "fp16", "int6", "int6:mse"]


def test_regularize_keeps_group_and_row_specs_apart():
    r = regularize({"w": {"int6:g64": 0.01, "int4:g64": 0.0, "int6": 0.5, "int4": 0.2}})["w"]
    assert r["int4:g64"] == 0.01  # narrower groups never better than wider groups
    assert r["int4"] == 0.5 and r["int6:g64"] == 0.01  # per-row quantile does not leak into the group family


def test_lqer_candidates_on_sdclip_and_the_first_clip_at_every_width_of_big_enough_matrices():
    labels = [s.label() for s in candidate_specs(torch.zeros(64, 256), bits=(6, 5, 4), clips=("quantile", "mse"), gptq=True, groups=())]
    assert [lb for lb in labels if "lqer" in lb] == [f"int{b}{x}" for b in (6, 5, 4) for x in
                                                     (":sd12+lqer4", ":sd12+gptq+lqer4", "+lqer4", "+gptq+lqer4")]
    assert len(labels) == 2 + 3 * 3 * 2 + 3 * 4  # 4 more a width, not one per clip: mse gets none
    # the first clip is the one that rides along, and an sd clip among `clips` is not offered twice
    only = candidate_specs(torch.zeros(64, 256), bits=(4,), clips=("mse", "sd12"), groups=())
    assert [s.label() for s in only if s.lqer] == ["int4:sd12+lqer4", "int4:mse+lqer4"]
    assert [s.label() for s in candidate_specs(torch.zeros(64, 256), bits=(4,), clips=("quantile",), sd=None, groups=()) if s.lqer] == ["int4+lqer4"]
    # too small a matrix (rank 4 would cost over 1/16 of its levels), lqer=0, or a vector: none
    assert not [s for s in candidate_specs(torch.zeros(63, 256), bits=(4,)) if s.lqer]
    assert not [s for s in candidate_specs(torch.zeros(64, 256), bits=(4,), lqer=0) if s.lqer]
    assert not [s for s in candidate_specs(torch.zeros(4096), bits=(4,)) if s.lqer]


def test_regularize_keeps_lqer_apart_from_its_base_spec():
    r = regularize({"w": {"int5:sd12": 0.3, "int4:sd12": 0.5, "int4:sd12+lqer4": 0.1, "int5:sd12+lqer4": 0.2}})["w"]
    assert r["int4:sd12+lqer4"] == 0.2 and r["int4:sd12"] == 0.5  # monotone within each family, not across them


def test_one_outlier_candidate_a_matrix_at_int4_only_without_gptq():
    plain = [s.label() for s in candidate_specs(torch.zeros(8, 256), bits=(6, 5, 4)) if s.outliers]
    assert plain == ["int4:g64s6+out3"]
    assert not [s for s in candidate_specs(torch.zeros(8, 256), bits=(6, 5, 4), gptq=True) if s.outliers]  # GPTQ: measured ~0
    assert not [s for s in candidate_specs(torch.zeros(8, 256), bits=(6, 5)) if s.outliers]  # only on the int4 rung
    assert not [s for s in candidate_specs(torch.zeros(8, 64), bits=(4,)) if s.outliers]  # no wider than one group
    assert not [s for s in candidate_specs(torch.zeros(300), bits=(4,)) if s.outliers]  # matrices only
    assert not [s for s in candidate_specs(torch.zeros(8, 256), bits=(4,), outliers=0) if s.outliers]
    assert [s.label() for s in candidate_specs(torch.zeros(8, 256), bits=(4,), subscales=(0,)) if s.outliers] == ["int4:g64+out3"]
