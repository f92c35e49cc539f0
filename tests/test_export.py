"""Export of actors to ONNX policy artifacts, the model repository, and loading artifacts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from export_fixtures import (
    HIGH,
    LOW,
    export_test_policy,
    make_actor,
    make_metadata,
    make_run,
    observations_around,
)

from safepolicy.datasets import Dataset, write_dataset
from safepolicy.export import onnx_export
from safepolicy.export.artifact import (
    AUDIT_FILENAME,
    METADATA_FILENAME,
    ONNX_FILENAME,
    ONNX_METADATA_KEY,
    ArtifactError,
    AuditVerdict,
    ObservationError,
    PolicyMetadata,
    load_policy,
    read_audit_verdict,
    write_audit_verdict,
)
from safepolicy.export.cli import main as export_main
from safepolicy.export.onnx_export import ExportError, export_actor, export_run
from safepolicy.export.repository import ModelRepository, RepositoryError
from safepolicy.training.networks import SquashedGaussianActor

ROOT = Path(__file__).resolve().parent.parent

# Every algorithm ends in the same SquashedGaussianActor checkpoint (training/checkpoint.py), so
# "round-trip every algorithm's actor" means every algorithm name in the lineage, with the
# different network sizes the algorithms' configs use.
ALGORITHMS = [
    ("o3srl", (256, 256)),
    ("bc-safe", (64, 64)),
    ("td3bc-lag", (32, 32, 32)),
    ("drcorl", (128,)),
    ("marvel", (16, 48)),
]


def torch_outputs(actor: SquashedGaussianActor, observations: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        tensor = torch.from_numpy(observations)
        mean, log_std = actor.distribution(tensor)
        return {"action": actor(tensor).numpy(), "mean": mean.numpy(), "log_std": log_std.numpy()}


def output_layer(actor: SquashedGaussianActor) -> torch.nn.Linear:
    layer = actor.trunk[-1]
    assert isinstance(layer, torch.nn.Linear)
    return layer


def leftovers(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir()) if directory.exists() else []


# --- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize(("algorithm", "hidden_sizes"), ALGORITHMS)
def test_round_trip_matches_torch_for_every_algorithm(tmp_path, algorithm, hidden_sizes):
    actor = make_actor(obs_dim=9, hidden_sizes=hidden_sizes)
    run = make_run(tmp_path / "run", actor, make_metadata(algorithm))

    version_dir = export_run(run, tmp_path / "repo", algorithm)

    assert version_dir == tmp_path / "repo" / algorithm / "1"
    policy = load_policy(version_dir)
    assert policy.metadata.algorithm == algorithm
    assert policy.metadata.hidden_sizes == list(hidden_sizes)
    assert (policy.metadata.obs_dim, policy.metadata.action_dim) == (9, 2)
    # wider than the verification batch, so saturated tanh and far tails are covered too
    observations = observations_around(actor, count=300, spread=6.0)
    expected = torch_outputs(actor, observations)
    got = policy.outputs(observations)
    for key in ("action", "mean", "log_std"):
        np.testing.assert_allclose(getattr(got, key), expected[key], rtol=0, atol=1e-5)
    actions = policy(observations)
    assert actions.dtype == np.float32 and actions.shape == (300, 2)
    assert (actions >= np.array(LOW, np.float32)).all()
    assert (actions <= np.array(HIGH, np.float32)).all()


def test_graph_bakes_in_normalisation_and_scaling(tmp_path):
    actor = make_actor()
    observations = observations_around(actor)
    policy = load_policy(export_actor(actor, make_metadata(), tmp_path, "p"))
    artifact = policy(observations)

    with torch.no_grad():
        raw = torch.from_numpy(observations)
        mean_without_normalisation = actor.trunk(raw).chunk(2, dim=-1)[0]
        without_normalisation = actor.scale(torch.tanh(mean_without_normalisation)).numpy()
        without_scaling = torch.tanh(actor.distribution(raw)[0]).numpy()
    # the references are different functions, so equality below can only hold with both steps
    assert np.abs(without_normalisation - artifact).max() > 0.1
    assert np.abs(without_scaling - artifact).max() > 0.1
    np.testing.assert_allclose(artifact, torch_outputs(actor, observations)["action"], atol=1e-5)


@pytest.mark.parametrize("lost", ["normalisation", "scaling"])
def test_export_refuses_a_graph_that_lost_a_step(tmp_path, monkeypatch, lost):
    def broken_forward(self, observations):
        inputs = observations if lost == "normalisation" else self.actor.normalizer(observations)
        mean, log_std = self.actor.trunk(inputs).chunk(2, dim=-1)
        log_std = log_std.clamp(-5.0, 2.0)
        action = torch.tanh(mean) if lost == "scaling" else self.actor.scale(torch.tanh(mean))
        return action, mean, log_std

    monkeypatch.setattr(onnx_export._PolicyGraph, "forward", broken_forward)
    with pytest.raises(ExportError, match="disagree"):
        export_actor(make_actor(), make_metadata(), tmp_path / "repo", "p")
    assert leftovers(tmp_path / "repo") == []


def test_verifies_on_the_run_dataset_when_readable(tmp_path):
    actor = make_actor()
    rng = np.random.default_rng(0)
    n = 40
    observations = observations_around(actor, count=n)
    dataset = Dataset(
        observations=observations,
        next_observations=observations,
        actions=rng.uniform(-1, 1, (n, 2)).astype(np.float32),
        rewards=np.zeros(n, np.float32),
        costs=np.zeros(n, np.float32),
        terminals=np.zeros(n, bool),
        timeouts=np.arange(n) % 20 == 19,
        attrs={},
    )
    path = write_dataset(tmp_path / "data.h5", dataset)

    with_dataset = export_actor(actor, make_metadata(dataset_path=str(path)), tmp_path / "r", "p")
    missing = export_actor(
        actor, make_metadata(dataset_path=str(tmp_path / "gone.h5")), tmp_path / "r", "p"
    )

    verification = load_policy(with_dataset).metadata.verification or {}
    assert (verification["source"], verification["observations"]) == ("dataset", n)
    assert max(verification["max_abs_difference"].values()) <= 1e-5
    assert (load_policy(missing).metadata.verification or {})["source"] == "random"


# --- metadata ------------------------------------------------------------------------------------


def test_metadata_is_in_metadata_json_and_in_the_onnx_model(tmp_path):
    lineage = make_metadata()
    lineage.config["path"] = Path("/x")  # not JSON: an in-memory config may hold such values
    version_dir = export_actor(make_actor(), lineage, tmp_path, "policy")

    from_json = PolicyMetadata.model_validate_json((version_dir / METADATA_FILENAME).read_text())
    model = onnx.load(str(version_dir / ONNX_FILENAME))
    props = {prop.key: prop.value for prop in model.metadata_props}
    from_onnx = PolicyMetadata.model_validate(json.loads(props[ONNX_METADATA_KEY]))

    assert from_json == from_onnx
    assert (from_json.name, from_json.version, from_json.task) == ("policy", 1, "BallRun")
    assert from_json.algorithm == "o3srl" and from_json.cost_limit == 20.0 and from_json.seed == 7
    assert from_json.evaluation == {"normalized_return": 0.5, "normalized_cost": 0.8}
    assert from_json.config["path"] == "/x"  # non-JSON values are stored as text
    assert (from_json.action_low, from_json.action_high) == (list(LOW), list(HIGH))
    assert from_json.onnx_opset == model.opset_import[0].version == onnx_export.OPSET
    assert from_json.input_name == "obs"
    assert from_json.output_names == ("action", "mean", "log_std")
    assert [i.name for i in model.graph.input] == ["obs"]
    assert [o.name for o in model.graph.output] == ["action", "mean", "log_std"]
    created = json.loads((version_dir / METADATA_FILENAME).read_text())["created_at"]
    assert created.endswith("Z") and from_json.created_at.tzinfo is not None
    assert abs((datetime.now(UTC) - from_json.created_at).total_seconds()) < 60


def test_metadata_rejects_inconsistent_bounds():
    fields = json.loads(
        PolicyMetadata(
            name="p",
            version=1,
            task="t",
            env_id="e",
            obs_dim=3,
            action_dim=2,
            action_low=[-1, -1],
            action_high=[1, 1],
            algorithm="a",
            cost_limit=1.0,
            seed=0,
            onnx_opset=17,
        ).to_json()
    )
    with pytest.raises(ValueError, match="action_dim"):
        PolicyMetadata.model_validate({**fields, "action_low": [-1.0]})
    with pytest.raises(ValueError, match="low < high"):
        PolicyMetadata.model_validate({**fields, "action_low": [1.0, -1.0]})
    with pytest.raises(ValueError, match="timezone"):
        PolicyMetadata.model_validate({**fields, "created_at": "2026-01-01T00:00:00"})


# --- repository and versions --------------------------------------------------------------------


def test_versions_default_to_the_next_free_one(tmp_path):
    repo = tmp_path / "repo"
    first = export_test_policy(repo)
    second = export_test_policy(repo)
    explicit = export_test_policy(repo, version=7)
    after = export_test_policy(repo)

    assert [p.name for p in (first, second, explicit, after)] == ["1", "2", "7", "8"]
    assert load_policy(explicit).metadata.version == 7
    repository = ModelRepository(repo)
    assert repository.versions("policy") == [1, 2, 7, 8]
    assert repository.latest_version("policy") == 8
    assert repository.next_version("policy") == 9
    assert repository.version_dir("policy") == after
    assert repository.load("policy", 2).metadata.version == 2


def test_an_existing_version_is_never_overwritten(tmp_path):
    version_dir = export_test_policy(tmp_path)
    before = (version_dir / ONNX_FILENAME).read_bytes()
    with pytest.raises(ExportError, match="already exists"):
        export_test_policy(tmp_path, version=1)
    assert (version_dir / ONNX_FILENAME).read_bytes() == before
    assert leftovers(tmp_path / "policy") == ["1"]


@pytest.mark.parametrize("version", [0, -3, True, 1.5])
def test_non_positive_or_non_integer_versions_are_refused(tmp_path, version):
    with pytest.raises(ExportError, match="positive integers"):
        export_test_policy(tmp_path, version=version)
    assert leftovers(tmp_path) == []


def test_repository_ignores_temporary_hidden_and_non_integer_entries(tmp_path):
    export_test_policy(tmp_path, name="a")
    for junk in (".tmp-export-abc", "latest", "01", "0", "-2", "3.txt"):
        (tmp_path / "a" / junk).mkdir()
    (tmp_path / "a" / "5").write_text("a file, not a version")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "empty").mkdir()

    repository = ModelRepository(tmp_path)
    assert repository.names() == ["a"]
    assert repository.versions("a") == [1]
    assert repository.next_version("a") == 2
    assert repository.latest_version("nobody") is None
    with pytest.raises(RepositoryError, match="no version 4"):
        repository.version_dir("a", 4)
    with pytest.raises(RepositoryError, match="no versions of policy"):
        repository.version_dir("nobody")
    with pytest.raises(RepositoryError, match="invalid policy name"):
        repository.versions("../a")


def test_repository_path_that_is_a_file_is_refused(tmp_path):
    repo = tmp_path / "repo"
    repo.write_text("not a directory")
    with pytest.raises(RepositoryError, match="is a file"):
        ModelRepository(repo)
    with pytest.raises(ExportError, match="is a file"):
        export_test_policy(repo)


# --- atomicity -------------------------------------------------------------------------------


def test_failed_verification_leaves_no_version_and_no_temp_dir(tmp_path, monkeypatch):
    export_test_policy(tmp_path)  # version 1 exists, so the name directory must survive
    monkeypatch.setattr(onnx_export, "TOLERANCE", -1.0)

    with pytest.raises(ExportError, match="disagree"):
        export_test_policy(tmp_path)
    with pytest.raises(ExportError):
        export_test_policy(tmp_path, name="fresh")

    assert leftovers(tmp_path / "policy") == ["1"]
    assert leftovers(tmp_path) == ["policy"]  # no empty "fresh" directory either
    assert ModelRepository(tmp_path).versions("policy") == [1]


def test_failure_while_writing_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx_export, "write_metadata", fail)
    with pytest.raises(ExportError, match="No space left"):
        export_test_policy(tmp_path)
    assert leftovers(tmp_path) == []


def test_version_dir_is_complete_when_it_appears(tmp_path, monkeypatch):
    seen: list[list[str]] = []
    real_rename = os.rename

    def watching_rename(source, target):
        seen.append(leftovers(Path(source)))
        assert not Path(target).exists()
        real_rename(source, target)

    monkeypatch.setattr(onnx_export.os, "rename", watching_rename)
    version_dir = export_test_policy(tmp_path)
    assert seen == [[METADATA_FILENAME, ONNX_FILENAME]]
    assert leftovers(version_dir) == [METADATA_FILENAME, ONNX_FILENAME]


# --- loading artifacts -----------------------------------------------------------------------


def test_policy_rejects_bad_observations(tmp_path):
    policy = load_policy(export_test_policy(tmp_path, obs_dim=6))
    assert policy(np.zeros((0, 6))).shape == (0, 2)
    with pytest.raises(ObservationError, match=r"\[batch, 6\].*observations\[None\]"):
        policy(np.zeros(6))
    with pytest.raises(ObservationError, match=r"\[batch, 6\]"):
        policy(np.zeros((3, 5)))
    bad = np.zeros((4, 6))
    bad[2, 1] = np.nan
    with pytest.raises(ObservationError, match=r"row\(s\) \[2\]"):
        policy(bad, deterministic=False)
    with pytest.raises(ObservationError, match="numeric"):
        policy([["a"] * 6])
    assert issubclass(ObservationError, ValueError)


def test_opening_damaged_artifacts_names_the_path(tmp_path):
    with pytest.raises(ArtifactError, match="no such policy version directory"):
        load_policy(tmp_path / "nope")

    version_dir = export_test_policy(tmp_path)
    metadata = json.loads((version_dir / METADATA_FILENAME).read_text())
    (version_dir / METADATA_FILENAME).write_text(json.dumps({**metadata, "obs_dim": 7}))
    with pytest.raises(ArtifactError, match="differ"):
        load_policy(version_dir)
    (version_dir / METADATA_FILENAME).write_text("{not json")
    with pytest.raises(ArtifactError, match=f"{METADATA_FILENAME}: invalid policy metadata"):
        load_policy(version_dir)
    (version_dir / METADATA_FILENAME).unlink()
    with pytest.raises(ArtifactError, match="cannot read policy metadata"):
        load_policy(version_dir)

    other = export_test_policy(tmp_path)
    (other / ONNX_FILENAME).write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match=f"{ONNX_FILENAME}: onnxruntime cannot load"):
        load_policy(other)


def test_graph_shapes_must_match_the_metadata(tmp_path):
    small = export_test_policy(tmp_path, name="small", obs_dim=4)
    large = export_test_policy(tmp_path, name="large", obs_dim=5)
    # the obs_dim-5 graph carrying the obs_dim-4 metadata, in both places: the copies agree,
    # only the graph's shapes can tell
    model = onnx.load(str(large / ONNX_FILENAME))
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {ONNX_METADATA_KEY: (small / METADATA_FILENAME).read_text()})
    onnx.save(model, str(small / ONNX_FILENAME))
    with pytest.raises(ArtifactError, match=r"input shape \['batch', 5\], expected \[batch, 4\]"):
        load_policy(small)


# --- stochastic sampling ------------------------------------------------------------------------


def test_stochastic_actions_are_bounded_and_reproducible(tmp_path):
    actor = make_actor()
    with torch.no_grad():  # a wide Gaussian: many samples saturate tanh at the bounds
        output_layer(actor).bias[2:] = 2.0
    policy = load_policy(export_actor(actor, make_metadata(), tmp_path, "p"))
    observations = np.repeat(observations_around(actor, count=4), 500, axis=0)

    first = policy(observations, deterministic=False, rng=np.random.default_rng(3))
    again = policy(observations, deterministic=False, rng=np.random.default_rng(3))
    other = policy(observations, deterministic=False, rng=np.random.default_rng(4))

    assert first.dtype == np.float32 and first.shape == (2000, 2)
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    assert (first >= np.array(LOW, np.float32)).all()
    assert (first <= np.array(HIGH, np.float32)).all()
    assert first.std(axis=0).min() > 0.1


def test_narrow_gaussian_samples_centre_on_the_deterministic_action(tmp_path):
    actor = make_actor()
    with torch.no_grad():  # log_std = LOG_STD_MIN everywhere: std about 0.0067
        output_layer(actor).weight[2:] = 0.0
        output_layer(actor).bias[2:] = -10.0
    policy = load_policy(export_actor(actor, make_metadata(), tmp_path, "p"))
    observation = observations_around(actor, count=1)

    deterministic = policy(observation)[0]
    samples = policy(
        np.repeat(observation, 4000, axis=0), deterministic=False, rng=np.random.default_rng(0)
    )
    np.testing.assert_allclose(policy.outputs(observation).log_std, -5.0)
    np.testing.assert_allclose(samples.mean(axis=0), deterministic, atol=2e-3)
    assert 0 < samples.std(axis=0).max() < 0.05


# --- bad input and the command line ----------------------------------------------------------


def test_wrong_kind_of_checkpoint_is_refused(tmp_path):
    torch.save({"weights": torch.zeros(3)}, tmp_path / "actor.pt")
    with pytest.raises(ExportError, match="not a safepolicy actor checkpoint"):
        export_run(tmp_path, tmp_path / "repo", "p")
    (tmp_path / "actor.pt").write_text("hello, I am text")
    with pytest.raises(ExportError, match="not a readable torch checkpoint"):
        export_run(tmp_path, tmp_path / "repo", "p")
    with pytest.raises(ExportError, match="no such run directory"):
        export_run(tmp_path / "missing", tmp_path / "repo", "p")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match="no final actor checkpoint"):
        export_run(tmp_path / "empty", tmp_path / "repo", "p")
    assert not (tmp_path / "repo").exists() or leftovers(tmp_path / "repo") == []


def test_cli_exports_and_reports_errors(tmp_path, capsys):
    run = make_run(tmp_path / "run")
    repo = tmp_path / "repo"
    assert export_main(["--run", str(run), "--repo", str(repo), "--name", "p"]) == 0
    assert "exported p version 1" in capsys.readouterr().out

    from safepolicy.cli import main as safepolicy_main

    assert (
        safepolicy_main(
            [
                "export",
                "--run",
                str(run),
                "--repo",
                str(repo),
                "--name",
                "p",
                "--version",
                "4",
                "--print-path",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(repo / "p" / "4")

    assert (
        export_main(["--run", str(run), "--repo", str(repo), "--name", "p", "--version", "4"]) == 1
    )
    assert "already exists" in capsys.readouterr().err
    assert export_main(["--run", str(tmp_path / "nope"), "--repo", str(repo), "--name", "p"]) == 1
    assert "no such run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--run", str(run), "--repo", str(repo), "--name", "p", "--version", "0"])
    assert exit_info.value.code == 2
    assert "not a positive version" in capsys.readouterr().err
    assert ModelRepository(repo).versions("p") == [1, 4]


def test_python_dash_m_export_runs(tmp_path):
    run = make_run(tmp_path / "run")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "safepolicy.export",
            "--run",
            str(run),
            "--repo",
            str(tmp_path / "repo"),
            "--name",
            "p",
            "--print-path",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "repo" / "p" / "1")


# --- audit verdicts and the server-side import boundary ---------------------------------------


def test_audit_verdict_round_trip(tmp_path):
    version_dir = export_test_policy(tmp_path)
    assert read_audit_verdict(version_dir) is None
    verdict = AuditVerdict(
        verdict="PASS",
        task="BallRun",
        cost_limit=20.0,
        confidence=0.95,
        episodes=50,
        mean_cost=4.0,
        cost_upper_bound=9.5,
        violation_rate=0.02,
        report_path="reports/ballrun.html",
    )

    path = write_audit_verdict(version_dir, verdict)

    assert path == version_dir / AUDIT_FILENAME
    assert read_audit_verdict(version_dir) == verdict
    assert leftovers(version_dir) == [AUDIT_FILENAME, METADATA_FILENAME, ONNX_FILENAME]
    assert load_policy(version_dir).metadata.version == 1  # the audit file does not disturb it
    (version_dir / AUDIT_FILENAME).write_text('{"verdict": "MAYBE"}')
    with pytest.raises(ArtifactError, match="invalid audit verdict"):
        read_audit_verdict(version_dir)
    with pytest.raises(ArtifactError, match="not a policy version directory"):
        write_audit_verdict(tmp_path / "missing", verdict)
    with pytest.raises(ValueError):
        AuditVerdict(**{**verdict.model_dump(), "violation_rate": 1.5})


def test_server_side_modules_do_not_import_torch_or_gyms():
    code = (
        "import sys, export.artifact, export.repository; "
        "bad = [m for m in ('torch', 'gymnasium', 'gym', 'safety_gymnasium', 'training') "
        "if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
