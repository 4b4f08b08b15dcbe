"""The machine-speed scaling of ETA lines, and the promise behind it: no preset stops on wall time."""

from __future__ import annotations

import dataclasses
import math

import pytest

from rlhfkit.speed import REFERENCE_GFLOPS, matmul_gflops, scale_estimates, speed_factor


def test_speed_factor_by_hand():
    assert speed_factor(50.0, reference=100.0) == 2.0  # half as fast: twice as long
    assert speed_factor(400.0, reference=100.0) == 0.25
    assert speed_factor(1.0, reference=100.0) == 20.0  # clipped: one disturbed measurement stays sane
    assert speed_factor(1e6, reference=100.0) == 0.1
    assert speed_factor(0.0) == 1.0 and speed_factor(math.nan) == 1.0  # no measurement: unscaled
    assert speed_factor(REFERENCE_GFLOPS) == 1.0


def test_scale_estimates():
    assert scale_estimates({"pretrain": 280.0, "sft": 55.0}, 1.5) == {"pretrain": 420.0, "sft": 82.5}


def test_matmul_rate_is_a_finite_positive_rate():
    rate = matmul_gflops(n=128, repeats=3)
    assert math.isfinite(rate) and rate > 0


@pytest.mark.parametrize("module", ["rlhfkit.experiments.sentiment", "rlhfkit.experiments.factuality.experiment"])
def test_no_preset_stops_on_wall_time(module):
    """Results depend on the seed, never on the machine's speed: no preset sets a time limit on any stage."""
    import importlib

    presets = importlib.import_module(module).PRESETS
    for name, cfg in presets.items():
        for f in dataclasses.fields(cfg):
            if "minutes" in f.name or "seconds" in f.name:
                assert getattr(cfg, f.name) is None, f"preset {name} sets {f.name}"


def test_experiment_eta_line_names_the_machine_rate(tmp_path, capsys):
    from rlhfkit.experiments.runner import machine_scaled

    scaled = machine_scaled({"pretrain": 100.0}, threads=None)
    line = capsys.readouterr().err
    assert "GFLOP/s fp32 matmul" in line and "stage estimates x" in line
    factor = float(line.split("stage estimates x")[1].split()[0])
    assert scaled["pretrain"] == pytest.approx(100.0 * factor, rel=0.01)
