"""safepolicy.plots: a run's curves picture finds every algorithm's columns by name."""

from __future__ import annotations

import math
from pathlib import Path

from safepolicy.plots import _panels, plot_training_curves, read_scalars


def test_curves_group_columns_by_meaning_and_write_a_png(tmp_path: Path) -> None:
    scalars = tmp_path / "scalars.csv"
    scalars.write_text(
        "step,stage,wall_seconds,loss/actor,loss/critic,o3srl/expected_lambda,"
        "o3srl/cost_value,o3srl/cost_budget_value,multiplier/kp\n"
        "10,train,0.5,2.0,1.0,0.5,3.0,2.0,0.1\n"
        "20,train,1.0,1.5,,0.7,2.5,2.0,0.1\n"
    )
    columns = read_scalars(scalars)
    assert columns["step"] == [10.0, 20.0] and math.isnan(columns["loss/critic"][1])
    assert _panels(columns) == {
        "losses": ["loss/actor", "loss/critic"],
        "multiplier": ["o3srl/expected_lambda"],
        "cost value against budget": ["o3srl/cost_value", "o3srl/cost_budget_value"],
    }
    evaluation = {"episodes": 2, "normalized_reward": 0.4, "normalized_cost": 1.3}
    out = plot_training_curves(scalars, tmp_path / "curves.png", 10.0, evaluation)
    assert out.read_bytes().startswith(b"\x89PNG") and out.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "scalars.csv"]
