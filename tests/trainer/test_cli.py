from __future__ import annotations

import json
import os
import subprocess
import sys

from click.testing import CliRunner

from golfpack.cli import main


def test_print_config_applies_file_flags_and_sets(tmp_path):
    res = CliRunner().invoke(main, ["train", "--config", "tiny", "--train", "x_*.bin", "-o", str(tmp_path),
                                    "--set", "iterations=9", "--set", "qat_policy=int6+tok8", "--print-config", "--json"])
    assert res.exit_code == 0, res.output
    cfg = json.loads(res.output)
    assert (cfg["iterations"], cfg["train_files"], cfg["out_dir"], cfg["qat_policy"], cfg["num_layers"]) == (
        9, "x_*.bin", str(tmp_path), "int6+tok8", 2)


def test_help_config_lists_fields():
    res = CliRunner().invoke(main, ["train", "--help-config"])
    assert res.exit_code == 0
    assert "max_wallclock_seconds (float, default 600.0)" in res.output


def test_train_appears_in_the_top_level_help():
    res = CliRunner().invoke(main, ["--help"])
    assert "train" in res.output


def test_module_entry_point_reports_errors_in_one_line(tmp_path):
    # What torchrun runs on every rank; a bad world size is refused before anything is built.
    proc = subprocess.run([sys.executable, "-m", "golfpack.trainer", "--config", "tiny", "--train", str(tmp_path / "none*.bin")],
                          capture_output=True, text=True, env=dict(os.environ, WORLD_SIZE="3", RANK="0"), timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "Error: world size 3 does not divide 8: the global batch is split into 8 micro-batches, so use --nproc_per_node 1, 2, 4 or 8"
