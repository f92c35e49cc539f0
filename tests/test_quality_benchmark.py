"""benchmarks/quality.py without training: the summary, the table and its references, the README
fragment, the issue-18 preset, bad input and ``--report-only`` on kept result files."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from safepolicy.datasets import Dataset, write_dataset
from safepolicy.tasks import get_task

QUALITY_PY = Path(__file__).resolve().parent.parent / "benchmarks" / "quality.py"


@pytest.fixture(scope="module")
def quality() -> ModuleType:
    """benchmarks/ is not a package, so the benchmark is imported from its path."""
    spec = importlib.util.spec_from_file_location("quality_benchmark", QUALITY_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def result(
    algorithm: str, limit: float, seed: int, reward: float, cost: float, task: str = "BallRun"
) -> dict:
    """One run's result as train_once keeps it (the fields the report reads)."""
    return {
        "task": task,
        "algorithm": algorithm,
        "cost_limit": limit,
        "seed": seed,
        "normalized_reward": reward,
        "normalized_cost": cost,
        "train_seconds": 100.0 + seed,
    }


def test_a_cell_is_unsafe_iff_its_mean_cost_is_above_one_and_high_seeds_are_named(
    quality: ModuleType,
) -> None:
    results = [
        # mean cost exactly 1.0: safe; seed 1 at exactly 1.5 is not flagged
        result("o3srl", 5.0, 0, 0.4, 0.5),
        result("o3srl", 5.0, 1, 0.6, 1.5),
        # mean cost 1.05: unsafe; seed 1 at 1.9 is flagged
        result("o3srl", 10.0, 0, 0.2, 0.2),
        result("o3srl", 10.0, 1, 0.8, 1.9),
        # mean safe, but one seed far over the limit
        result("bc-safe", 5.0, 0, 0.1, 0.0),
        result("bc-safe", 5.0, 1, 0.1, 0.0),
        result("bc-safe", 5.0, 2, 0.1, 2.4),
    ]
    summary = quality.summarise(results)
    assert summary[("BallRun", "o3srl", 5.0)]["reward_mean"] == pytest.approx(0.5)
    assert summary[("BallRun", "o3srl", 5.0)]["high_cost_seeds"] == {}
    assert summary[("BallRun", "o3srl", 10.0)]["high_cost_seeds"] == {1: 1.9}
    assert summary[("BallRun", "bc-safe", 5.0)]["seconds_mean"] == pytest.approx(101.0)

    limits = {"BallRun": [5.0, 10.0]}
    table = quality.markdown_table(summary, ["BallRun"], ["o3srl", "bc-safe"], limits)
    rows = {line.split("|")[2].strip(): line for line in table.splitlines()[2:4]}
    o3srl_5, bc_safe_5 = rows["5"].split("|")[4:6]
    o3srl_10 = rows["10"].split("|")[4]
    assert o3srl_5.strip() == "0.50 ± 0.10 / 1.00 ± 0.50"
    assert "**unsafe**" in o3srl_10 and "s1 1.90" in o3srl_10 and "s0" not in o3srl_10
    assert "**unsafe**" not in bc_safe_5 and "(cost > 1.5: s2 2.40)" in bc_safe_5
    assert rows["10"].split("|")[5].strip() == "-"  # no bc-safe runs at limit 10


def test_table_shows_the_dataset_reference_and_published_figures(quality: ModuleType) -> None:
    summary = quality.summarise([result("cpq", 5.0, 0, 0.3, 0.1, task="CarCircle")])
    published = quality.load_published(quality.PUBLISHED_FIGURES)
    table = quality.markdown_table(
        summary,
        ["CarCircle"],
        ["cpq", "o3srl"],
        {"CarCircle": [5.0, 10.0]},
        references={("CarCircle", 5.0): 0.53, ("CarCircle", 10.0): None},
        published=published,
    )
    lines = table.splitlines()
    assert lines[0] == "| task | cost limit | best safe episode in dataset | cpq | o3srl |"
    assert lines[2].startswith("| CarCircle | 5 | 0.53 | 0.30 ± 0.00 / 0.10 ± 0.00 | - |")
    assert lines[3].startswith("| CarCircle | 10 | none safe | - | - |")
    # DRCORL's Table 1, CPQ column, CarCircle row; O3SRL's texts give no per-task figures
    assert lines[4] == "| CarCircle | published¹ | | 0.70 / 0.00 | not reported |"


def test_every_published_figure_names_its_source(quality: ModuleType) -> None:
    data = json.loads(quality.PUBLISHED_FIGURES.read_text())
    for figure in data["figures"]:
        assert figure["source"] in data["sources"]
        get_task(figure["task"])  # a task name the benchmark knows
    assert {"o3srl", "td3bc-lag"} <= {row["algorithm"] for row in data["not_reported"]}


def test_best_safe_episode_is_the_best_return_within_the_limit(
    quality: ModuleType, tmp_path: Path
) -> None:
    # three 4-step episodes: (return, cost) = (100, 3), (300, 12), (200, 8)
    returns, costs, length = [100.0, 300.0, 200.0], [3.0, 12.0, 8.0], 4
    n = length * len(returns)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[length - 1 :: length] = True
    path = write_dataset(
        tmp_path / "BallRun.h5",
        Dataset(
            observations=np.zeros((n, 3), dtype=np.float32),
            next_observations=np.zeros((n, 3), dtype=np.float32),
            actions=np.zeros((n, 2), dtype=np.float32),
            rewards=np.repeat(np.array(returns, dtype=np.float32) / length, length),
            costs=np.repeat(np.array(costs, dtype=np.float32) / length, length),
            terminals=np.zeros(n, dtype=bool),
            timeouts=timeouts,
            attrs={"task": "BallRun"},
        ),
    )
    normalised = get_task("BallRun").normalized_reward
    best = quality.best_safe_episodes(path, "BallRun", [2.0, 5.0, 10.0, 12.0, 20.0])
    assert best == {
        2.0: None,  # no episode is that safe
        5.0: pytest.approx(normalised(100.0)),
        10.0: pytest.approx(normalised(200.0)),
        12.0: pytest.approx(normalised(300.0)),  # cost equal to the limit is safe
        20.0: pytest.approx(normalised(300.0)),
    }
    references = quality.dataset_references(
        {"BallRun": path, "CarCircle": tmp_path / "absent.h5"},
        {"BallRun": [5.0], "CarCircle": [5.0]},
    )
    assert list(references) == [("BallRun", 5.0)]  # a task without its file has no reference


def test_readme_fragment_replacement_keeps_everything_outside_the_markers(
    quality: ModuleType,
) -> None:
    before = "# Title\r\n\nprose with ünïcode  \n<!-- quality-table:begin -->\n"
    after = "<!-- quality-table:end -->\ntrailing text without newline"
    text = before + "old table\nold settings\n" + after
    replaced = quality.replace_between_markers(text, "new table")
    assert replaced == before + "new table\n" + after
    assert quality.replace_between_markers(replaced, "new table") == replaced
    with pytest.raises(ValueError):
        quality.replace_between_markers("no markers here\n", "x")
    with pytest.raises(ValueError):
        quality.replace_between_markers(after + "\n" + before, "x")  # end before begin


def test_settings_scoped_to_an_algorithm_apply_to_it_alone(quality: ModuleType) -> None:
    settings = ["tau=0.01", "drcorl:tau=0.05", "run.batch_size=64", "td3bc.tau=0.05"]
    assert quality.settings_for("drcorl", settings) == {"tau": "0.05", "run.batch_size": "64"}
    assert quality.settings_for("cpq", settings) == {"tau": "0.01", "run.batch_size": "64"}
    assert quality.settings_for("o3srl", settings) == {
        "run.batch_size": "64",
        "td3bc.tau": "0.05",
    }


def test_issue18_preset_sets_the_table_and_explicit_flags_win(quality: ModuleType) -> None:
    args = quality.parse_args(["--table", "issue18", "--seeds", "0", "--steps-for", "cpq=4000"])
    assert args.algorithms == ["o3srl", "drcorl", "cpq", "bc-safe", "td3bc-lag"]
    assert args.seeds == [0] and args.eval_episodes == 20
    assert args.steps_for == {"cpq": 4000}  # the command line wins over the preset's 2000
    assert args.reuse_stages == {"drcorl": "critics"}
    assert quality.settings_for("cpq", args.settings)["run.precision"] == "fp32"
    assert "run.precision" not in quality.settings_for("o3srl", args.settings)
    assert quality.settings_for("drcorl", args.settings)["critics_steps"] == "5000"
    limits = {task: quality.cost_limits_for(task, args.cost_limits) for task in args.tasks}
    assert limits["BallCircle"] == [5.0, 10.0, 20.0]
    assert limits["HalfCheetahVelocity"] == [20.0, 40.0, 80.0]
    assert quality.cost_limits_for("PointGoal1", [7.0]) == [7.0]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "BalRun"], "did you mean BallRun?"),
        (["--steps-for", "cpq"], "--steps-for 'cpq': expected ALGORITHM=STEPS"),
        (["--steps-for", "cpq=many"], "--steps-for 'cpq=many': expected ALGORITHM=STEPS"),
        (["--steps-for", "nope=10"], "--steps-for 'nope=10': expected ALGORITHM=STEPS"),
        (["--set", "cpq:nope=1"], "cpq has no setting 'nope'"),
        (["--set", "tau"], "expected [ALGORITHM:]NAME=VALUE"),
    ],
)
def test_bad_input_is_a_one_line_parser_error(
    quality: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with pytest.raises(SystemExit) as stopped:
        quality.parse_args(argv)
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("quality.py: error: ") or error.startswith(
        f"{Path(sys.argv[0]).name}: error: "
    )
    assert message in error


def test_plot_draws_a_panel_for_each_of_six_tasks(quality: ModuleType, tmp_path: Path) -> None:
    tasks = ["BallRun", "BallCircle", "CarCircle", "PointGoal1", "HalfCheetahVelocity", "CarRun"]
    summary = quality.summarise([result("o3srl", 5.0, 0, 0.5, 0.5, task=t) for t in tasks])
    quality.plot(summary, tmp_path / "quality.png")
    assert (tmp_path / "quality.png").stat().st_size > 0


def test_report_only_draws_kept_results_whose_settings_match(
    quality: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, data = tmp_path / "out", tmp_path / "data"
    (out / "results").mkdir(parents=True)
    readme = tmp_path / "README.md"
    outside_before = "# Project\n\nSome prose.\n<!-- quality-table:begin -->\n"
    outside_after = "<!-- quality-table:end -->\nMore prose.\n"
    readme.write_text(outside_before + "stale fragment\n" + outside_after)
    argv = [
        "--tasks", "BallRun", "--algorithms", "bc-safe", "--cost-limits", "5", "10",
        "--seeds", "0", "1", "--steps", "50", "--eval-episodes", "1",
        "--data-dir", str(data), "--out", str(out), "--readme", str(readme),
    ]  # fmt: skip
    args = quality.parse_args(argv)
    jobs = quality.plan_jobs(args, {"BallRun": [5.0, 10.0]})
    for job in jobs:
        kept = result(job.algorithm, job.cost_limit, job.seed, 0.2 + job.seed / 10, cost=0.4)
        kept["fingerprint"] = quality.run_fingerprint(job.request())
        job.result_file.write_text(json.dumps(kept))
    # one result kept with other settings (another step count) is not drawn
    stale = json.loads(jobs[-1].result_file.read_text())
    stale["fingerprint"]["run_config"]["steps"] = 51
    stale["normalized_reward"] = 9.0
    jobs[-1].result_file.write_text(json.dumps(stale))

    assert quality.main([*argv, "--report-only"]) == 0

    printed = capsys.readouterr().out
    assert "3 runs drawn, 0 missing, 1 kept with other settings" in printed
    report = (out / "quality.md").read_text()
    assert "| BallRun | 5 | - | 0.25 ± 0.05 / 0.40 ± 0.00 |" in report
    assert "| BallRun | 10 | - | 0.20 ± 0.00 / 0.40 ± 0.00 |" in report  # seed 1 is stale
    assert "python benchmarks/quality.py --tasks BallRun" in report
    assert "--report-only" not in report
    assert (out / "quality.png").stat().st_size > 0
    text = readme.read_text()
    assert text.startswith(outside_before) and text.endswith(outside_after)
    fragment = text[len(outside_before) : -len(outside_after)]
    assert fragment == report.replace("(quality.png)", "(out/quality.png)")


def test_a_readme_without_markers_is_left_alone(
    quality: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("# Project\nno markers yet\n")
    args = quality.parse_args(["--readme", str(readme), "--out", str(tmp_path / "out")])
    assert args.readme is None
    assert "the README is left as it is" in capsys.readouterr().err


def test_a_stage_source_kept_only_as_a_result_file_is_retrained_for_its_checkpoint(
    quality: ModuleType, tmp_path: Path, ballrun_dataset: Path
) -> None:
    """On a fresh machine the committed result of a limit-5 DRCORL run is not enough for the
    limit-10 run that starts from its critics stage: the source run trains again."""
    import shutil

    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    shutil.copy(ballrun_dataset, data / "BallRun.h5")
    argv = [
        "--tasks", "BallRun", "--algorithms", "drcorl", "--cost-limits", "5", "10",
        "--seeds", "0", "--eval-episodes", "1", "--jobs", "1", "--no-readme",
        "--set", "behaviour_steps=20", "--set", "critics_steps=20", "--set", "policy_steps=20",
        "--set", "run.log_every=10", "--reuse-stage", "drcorl=critics",
        "--data-dir", str(data), "--out", str(out),
    ]  # fmt: skip
    assert quality.main(argv) == 0
    limit10 = out / "results" / "BallRun-drcorl-10-s0.json"
    assert json.loads(limit10.read_text())["reused_stage"]["stage"] == "critics"

    shutil.rmtree(out / "runs")  # what a fresh checkout has: the result files only
    limit10.unlink()
    assert quality.main(argv) == 0
    assert json.loads(limit10.read_text())["reused_stage"]["from"] == "BallRun-drcorl-5-s0"
    assert (out / "runs" / "BallRun-drcorl-5-s0" / "checkpoints" / "stage-critics.pt").is_file()
