"""The behaviour zoo: agents saved, loaded and played by collect; the mixture; the density filter.

The zoo agent is a real trained actor, as benchmarks/train_zoo.py makes them: SAC-Lag online for
400 environment transitions (60 updates) on BallRun (the fastest task), exported with the
exporter and evaluated in the real environment by ``safepolicy.zoo.add_agent``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from safepolicy import collect as collect_cli
from safepolicy import dataset_cli
from safepolicy.behavior import BehaviorError, BehaviorMix, ZooSettings
from safepolicy.collect import ZooOptions, collect, density_filter, save, select_episodes
from safepolicy.datasets import load_dataset
from safepolicy.tasks import get_task, make_env
from safepolicy.zoo import (
    CARD_FILENAME,
    ZooError,
    has_zoo,
    load_agents,
    parse_agent_weights,
    read_card,
)

TASK = "BallRun"


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zoo with two BallRun agents, ``slow`` and ``fast`` (the same short SAC-Lag run)."""
    import torch

    from safepolicy.training.cli import main as train_main
    from safepolicy.zoo import add_agent

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny network: more threads only fight over the shared cores
    root = tmp_path_factory.mktemp("zoo")
    run = root / "run"
    command = [
        "sac-lag",
        "--task",
        TASK,
        "--cost-limit",
        "20",
        "--steps",
        "100",
        "--out",
        str(run),
        "--set",
        "warmup_steps=100",
        "--set",
        "run.eval_episodes=0",
        "--set",
        "run.hidden_sizes=64,64",
        "--no-progress",
    ]
    assert train_main(command) == 0
    for name in ("slow", "fast"):
        add_agent(
            run,
            root / "zoo",
            TASK,
            name,
            command="safepolicy train " + " ".join(command),
            algorithm="sac-lag",
            cost_limit=20.0,
            train_env_steps=400,
            train_wall_s=1.0,
            eval_episodes=2,
        )
    torch.set_num_threads(threads)
    return root / "zoo"


def test_agent_is_saved_with_its_card_and_loads(zoo_dir: Path) -> None:
    agents = load_agents(TASK, zoo_dir)
    assert [agent.name for agent in agents] == ["fast", "slow"]
    card = read_card(agents[0].version_dir)
    assert card is not None and card.task == TASK and card.eval_episodes == 2
    assert card.command.startswith("safepolicy train sac-lag")
    assert np.isfinite(card.eval_return_mean) and card.eval_cost_mean >= 0
    # the exporter's format: readable by the torch-free loader, a few hundred KB at most
    assert (agents[0].version_dir / "policy.onnx").stat().st_size < 1_000_000
    assert agents[0].policy.obs_dim == 7  # BallRun's observation


def test_collect_plays_the_zoo_agent(zoo_dir: Path) -> None:
    """Without noise or switches, every recorded action is the agent's deterministic action."""
    options = ZooOptions(zoo_dir, weights="slow=1", max_noise=0.0, switch_probability=0.0)
    dataset = collect(TASK, 3, seed=1, behavior="zoo", progress=False, zoo=options)
    (agent,) = load_agents(TASK, zoo_dir, names=["slow"])
    np.testing.assert_allclose(dataset.actions, agent.policy(dataset.observations), atol=1e-6)
    assert dataset.attrs["behavior"]["episode_counts"] == {"zoo:slow": 3}
    assert len(dataset) == 3 * get_task(TASK).max_episode_steps


def test_a_task_with_a_zoo_defaults_to_it(zoo_dir: Path) -> None:
    dataset = collect(TASK, 2, seed=0, progress=False, zoo=ZooOptions(zoo_dir))
    assert dataset.attrs["behavior"]["spec"].startswith("zoo=")
    assert "zoo" in dataset.attrs["behavior"]


def test_a_version_without_its_card_is_not_played(zoo_dir: Path, tmp_path: Path) -> None:
    copy = tmp_path / "zoo"
    shutil.copytree(zoo_dir, copy)
    half_made = copy / TASK / "slow" / "2"
    shutil.copytree(copy / TASK / "slow" / "1", half_made)
    (half_made / CARD_FILENAME).unlink()
    (slow,) = load_agents(TASK, copy, names=["slow"])
    assert slow.version_dir == copy / TASK / "slow" / "1"
    shutil.rmtree(copy / TASK / "fast")
    (copy / TASK / "slow" / "1" / CARD_FILENAME).unlink()
    assert not has_zoo(TASK, copy)


def test_mixture_honours_its_weights(zoo_dir: Path) -> None:
    """Over many episodes each agent starts a share of them within 4 binomial sigmas of its
    weight, and a switching episode always switches to the other agent."""
    agents = tuple(load_agents(TASK, zoo_dir))
    weights = {"fast": 0.8, "slow": 0.2}
    env = make_env(TASK)
    try:
        mix = BehaviorMix(
            get_task(TASK),
            env,
            "zoo=0.9,random=0.1",
            zoo=ZooSettings(agents, weights, 0.3, switch_probability=0.5),
        )
        rng = np.random.default_rng(0)
        episodes, switched = 4000, 0
        for _ in range(episodes):
            mix.begin_episode(rng)
            if mix.controller is mix.zoo and mix.zoo is not None:
                if mix.zoo.switch_step < get_task(TASK).max_episode_steps:
                    switched += 1
                    assert mix.zoo.second != mix.zoo.first
                else:
                    assert mix.zoo.second == mix.zoo.first
    finally:
        env.close()
    counts = mix.episode_counts
    assert sum(counts.values()) == episodes
    for kind, p in (("zoo:fast", 0.9 * 0.8), ("zoo:slow", 0.9 * 0.2), ("random", 0.1)):
        sigma = np.sqrt(episodes * p * (1 - p))
        assert abs(counts[kind] - episodes * p) < 4 * sigma, (kind, counts)
    zoo_episodes = counts["zoo:fast"] + counts["zoo:slow"]
    assert abs(switched - 0.5 * zoo_episodes) < 4 * np.sqrt(zoo_episodes * 0.25)


def test_agent_weights_parse_and_refuse_bad_text() -> None:
    assert parse_agent_weights(None, ["a", "b"]) == {"a": 0.5, "b": 0.5}
    assert parse_agent_weights("a=3,b=1", ["a", "b"]) == {"a": 0.75, "b": 0.25}
    assert parse_agent_weights("b", ["a", "b"]) == {"a": 0.0, "b": 1.0}
    for bad, problem in (
        ("c=1", "unknown zoo agent 'c'"),
        ("a=x", "not a number"),
        ("a=-1", "non-negative"),
        ("a=0", "no agent a positive weight"),
    ):
        with pytest.raises(ZooError, match=problem):
            parse_agent_weights(bad, ["a", "b"])


def test_density_filter_evens_the_bins() -> None:
    """A crowded corner is capped, sparse bins are kept whole, and a minimum drops strays
    (DSRL drops bins holding ``min_per_bin`` or fewer)."""
    rng = np.random.default_rng(0)
    crowded = rng.uniform(0, 0.9, size=(200, 2))
    crowded[0] = 0.0  # the grid spans [0, 9.5] both ways, so bin k holds [0.95 k, 0.95 (k+1))
    pairs = np.array([[x + 0.5, y + 0.5] for x in range(1, 10) for y in range(10)] * 2)
    stray = np.array([[0.5, 5.5]])
    points = np.concatenate([crowded, pairs, stray])
    costs, returns = points[:, 0], points[:, 1]
    kept = density_filter(
        returns, costs, cost_bins=10, reward_bins=10, max_per_bin=3, rng=np.random.default_rng(1)
    )
    cells = np.minimum(costs[kept] / 0.95, 9).astype(int) * 10 + np.minimum(
        returns[kept] / 0.95, 9
    ).astype(int)
    assert np.unique(cells, return_counts=True)[1].max() <= 3
    assert np.sum(kept < 200) == 3  # the 200-episode corner keeps three
    assert np.all(np.isin(np.arange(200, 381), kept))  # every pair and the stray stay
    assert len(density_filter(returns, costs, 10, 10, max_per_bin=3, min_per_bin=1)) == 183
    assert len(density_filter(returns, costs, 10, 10, max_per_bin=3, min_per_bin=2)) == 3


def test_selected_episodes_keep_their_rows() -> None:
    dataset = collect(TASK, 3, seed=2, behavior="random", progress=False)
    picked = select_episodes(dataset, np.array([0, 2]))
    returns, _ = dataset.episode_returns_and_costs()
    picked_returns, _ = picked.episode_returns_and_costs()
    np.testing.assert_allclose(picked_returns, returns[[0, 2]])


def test_collect_cli_writes_a_filtered_zoo_dataset_that_dsrl_loads(
    zoo_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "zoo.h5"
    code = collect_cli.main(
        [
            "--task",
            TASK,
            "--out",
            str(out),
            "--episodes",
            "12",
            "--zoo",
            str(zoo_dir),
            "--zoo-weights",
            "fast=2,slow=1",
            "--density-filter",
            "2",
            "--density-bins",
            "3,3",
            "--quiet",
        ]
    )
    assert code == 0
    dataset = load_dataset(out)
    info = dataset.attrs["density_filter"]
    assert info["episodes_collected"] == 12 and info["episodes_kept"] < 12
    assert dataset.episode_returns_and_costs()[0].size == info["episodes_kept"]
    script = f"""
import gymnasium as gym, numpy as np
from safepolicy.gymcompat import import_safety_gymnasium
import_safety_gymnasium()  # dsrl's __init__ imports it, which fails on 3.11 without the shim
from dsrl.offline_env import OfflineEnv
class Ball(OfflineEnv):
    observation_space = gym.spaces.Box(-np.inf, np.inf, (7,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
data = Ball().get_dataset(h5path={str(out)!r})
print(data["observations"].shape[0], int(data["timeouts"].sum()))
"""
    env = {**os.environ, "DSRL_SUPPRESS_IMPORT_ERROR": "1"}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-2:] == [str(len(dataset)), str(info["episodes_kept"])]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--task", "DroneRun", "--behavior", "zoo"], "DroneRun has none"),
        (["--task", TASK, "--zoo-weights", "nobody=1"], "unknown zoo agent 'nobody'"),
        (["--task", TASK, "--zoo-switch", "1.5"], "--zoo-switch must be in [0, 1]"),
    ],
)
def test_collect_cli_refuses_bad_zoo_requests(
    zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], problem: str
) -> None:
    out = tmp_path / "x.h5"
    code = collect_cli.main(
        [*args, "--out", str(out), "--episodes", "1", "--zoo", str(zoo_dir), "--quiet"]
    )
    err = capsys.readouterr().err
    assert code == 2 and problem in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_behavior_mix_without_agents_is_refused() -> None:
    env = make_env(TASK)
    try:
        with pytest.raises(BehaviorError, match="has none"):
            BehaviorMix(get_task(TASK), env, "zoo")
    finally:
        env.close()


def test_dataset_plot(zoo_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.h5"
    save(collect(TASK, 4, seed=0, behavior="scripted", progress=False), data)
    picture = tmp_path / "plots" / "d.png"
    picture.parent.mkdir()
    assert dataset_cli.main([str(data), "--plot", str(picture)]) == 0
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and picture.stat().st_size > 5000
    assert dataset_cli.main([str(data), "--plot", str(tmp_path / "d.jpg")]) == 2
    assert "name it *.png" in capsys.readouterr().err
    assert dataset_cli.main([str(data), "--plot", str(tmp_path / "p.png"), "--task", "Nope"]) == 2
    assert "unknown task 'Nope'" in capsys.readouterr().err
