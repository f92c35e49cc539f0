"""Server pieces without a network: the error mapping, settings, outcomes, generated code,
and a torch-free import path."""

from __future__ import annotations

import filecmp
import math
import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from safepolicy.server import errors
from safepolicy.server.cli import build_parser, settings_from
from safepolicy.server.outcomes import OutcomeTracker
from safepolicy.server.protogen import GENERATED, generate
from safepolicy.server.settings import ServerSettings

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("error_type", errors.all_error_types(), ids=lambda t: t.__name__)
def test_every_error_type_maps_to_its_own_code_and_message(
    error_type: type[errors.ServerError],
) -> None:
    assert isinstance(error_type.code, grpc.StatusCode)
    if error_type is not errors.ServerError and error_type is not errors.InferenceFailed:
        assert error_type.code != grpc.StatusCode.INTERNAL, "client-facing errors are not bugs"
    code, message = errors.status_of(error_type("what is wrong; what to do"))
    assert code == error_type.code
    assert message == "what is wrong; what to do"


def test_the_expected_codes() -> None:
    expected = {
        errors.PolicyNotFound: grpc.StatusCode.NOT_FOUND,
        errors.VersionNotFound: grpc.StatusCode.NOT_FOUND,
        errors.InvalidObservations: grpc.StatusCode.INVALID_ARGUMENT,
        errors.BatchSizeError: grpc.StatusCode.INVALID_ARGUMENT,
        errors.NotReady: grpc.StatusCode.UNAVAILABLE,
        errors.ShuttingDown: grpc.StatusCode.UNAVAILABLE,
        errors.DeadlineExceeded: grpc.StatusCode.DEADLINE_EXCEEDED,
        errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
        errors.Overloaded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
    for error_type, code in expected.items():
        assert error_type.code == code


def test_unexpected_exceptions_are_internal_without_internals() -> None:
    code, message = errors.status_of(KeyError("secret-internal-detail"))
    assert code == grpc.StatusCode.INTERNAL
    assert "secret-internal-detail" not in message and "KeyError" in message


def test_generated_code_is_reproducible(tmp_path: Path) -> None:
    written = generate(tmp_path / "generated")
    names = sorted(path.name for path in written)
    committed = sorted(path.name for path in GENERATED.iterdir() if path.is_file())
    assert names == committed, (
        "server/_generated/ is stale: run `python -m safepolicy.server.protogen`"
    )
    _match, mismatch, error = filecmp.cmpfiles(
        tmp_path / "generated", GENERATED, names, shallow=False
    )
    assert mismatch == [] and error == [], (
        f"{mismatch + error} differ from protos/: run `python -m safepolicy.server.protogen`"
    )


def test_server_import_path_has_no_torch_and_no_gyms() -> None:
    code = (
        "import sys\n"
        "import server.app, server.cli, server.client, server.oip, server.policies\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'gymnasium', 'gym',"
        " 'safety_gymnasium', 'bullet_safety_gym', 'dsrl', 'pybullet', 'mujoco', 'training'})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_settings_from_environment_and_flags(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SAFEPOLICY_SERVER_REPO", str(tmp_path))
    monkeypatch.setenv("SAFEPOLICY_SERVER_PORT", "6000")
    monkeypatch.setenv("SAFEPOLICY_SERVER_PINS", "ballrun=1,2;other=3")
    monkeypatch.setenv("SAFEPOLICY_SERVER_REQUIRE_AUDIT", "true")
    from_env = settings_from(build_parser().parse_args([]))
    assert from_env.port == 6000 and from_env.require_audit
    assert from_env.pins == {"ballrun": [1, 2], "other": [3]}
    flagged = settings_from(build_parser().parse_args(["--port", "7000", "--workers", "2"]))
    assert flagged.port == 7000 and flagged.workers == 2 and flagged.repo == tmp_path


@pytest.mark.parametrize(
    "values",
    [
        {"tls_cert_file": "cert.pem"},
        {"tls_client_ca_file": "ca.pem"},
        {"workers": 2, "port": 0},
        {"auth_token": "a", "auth_token_file": "f"},
        {"pins": "ballrun"},
    ],
)
def test_inconsistent_settings_are_refused(values: dict[str, object], tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        ServerSettings(repo=tmp_path, **values)  # type: ignore[arg-type]


def test_outcomes_accumulate_steps_and_flag_violations() -> None:
    tracker = OutcomeTracker(window_steps=4, window_episodes=2, max_open_episodes=1)
    first = tracker.report("p", 1, 5.0, granularity="step", reward=1, cost=3, episode_id="a")
    assert (first.episode_cost, first.done) == (3.0, False)
    end = tracker.report(
        "p", 1, 5.0, granularity="step", reward=1, cost=3, episode_id="a", done=True
    )
    assert end.done and end.violation and end.steps == 2
    ok = tracker.report("p", 1, 5.0, granularity="episode", reward=9, cost=5.0, steps=2)
    assert ok.done and not ok.violation  # at the limit is within it
    assert tracker.rolling_episode_cost("p") == 5.5
    assert tracker.cost_rate("p") == pytest.approx(11.0 / 4)
    tracker.report("p", 1, 5.0, granularity="step", reward=0, cost=1, episode_id="b")
    tracker.report("p", 1, 5.0, granularity="step", reward=0, cost=1, episode_id="c")
    again = tracker.report("p", 1, 5.0, granularity="step", reward=0, cost=1, episode_id="b")
    assert again.episode_cost == 1.0  # "b" was evicted: open episodes are bounded
    with pytest.raises(errors.InvalidRequest):
        tracker.report("p", 1, 5.0, granularity="step", reward=0, cost=1)


def test_outcome_values_and_episode_ids_are_bounded() -> None:
    tracker = OutcomeTracker(window_steps=100)
    for huge in (1e308, 1e308):  # two finite costs used to overflow the running total
        with pytest.raises(errors.InvalidRequest, match="within"):
            tracker.report("p", 1, 5.0, granularity="episode", reward=0, cost=huge)
    with pytest.raises(errors.InvalidRequest, match="within"):
        tracker.report("p", 1, 5.0, granularity="episode", reward=-1e300, cost=0)
    for _ in range(2):
        tracker.report("p", 1, 5.0, granularity="episode", reward=0, cost=1e12)
    assert math.isfinite(tracker.cost_rate("p")) and tracker.cost_rate("p") == 1e12
    with pytest.raises(errors.InvalidRequest, match="at most 128"):
        tracker.report(
            "p", 1, 5.0, granularity="step", reward=0, cost=1, episode_id="e" * 1_000_000
        )
    tracker.report("p", 1, 5.0, granularity="step", reward=0, cost=1, episode_id="e" * 128)


def _server_imports() -> dict[str, set[str]]:
    """server module -> the server modules it imports (anywhere in the file, lazily too)."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "server").glob("*.py")):
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "safepolicy.server":
                    found.update(alias.name for alias in node.names)
                elif node.module.startswith("safepolicy.server."):
                    found.add(node.module.split(".")[2])
            elif isinstance(node, ast.Import):
                found.update(
                    alias.name.split(".")[2]
                    for alias in node.names
                    if alias.name.startswith("safepolicy.server.")
                )
        graph[path.stem] = found - {"_generated", path.stem}
    return graph


def test_server_modules_import_downwards_only() -> None:
    """No import cycle among server modules (app <-> oip was one), and the test harness is
    imported by no production module."""
    graph = _server_imports()
    assert "oip" in graph["app"]  # the walk sees real edges
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        assert module not in visiting, f"import cycle: {' -> '.join([*visiting, module])}"
        if module in done or module not in graph:
            return
        visiting.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)
    importers = sorted(m for m, imported in graph.items() if "testing" in imported)
    assert importers == [], f"production modules import the test harness: {importers}"
