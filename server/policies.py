"""The serving domain: which policy versions are loaded, and acting with them.

:class:`PolicyStore` reads a model repository (``REPO/NAME/VERSION/``, see docs/contracts.md)
and keeps an immutable snapshot of the loaded versions. :meth:`PolicyStore.reload` builds a new
snapshot beside the old one and swaps the reference in one assignment, so a request sees either
the old set or the new set, never a mixture, and requests in flight finish on the version they
started with. A version that fails to load (corrupt ONNX, bad metadata) is reported once per
change of its files and never replaces a working one.

Version policy: ``latest`` serves the newest version that loads (and passes the audit when
``require_audit``); ``all`` serves every such version; pinned policies serve exactly their
pinned versions. A request without a version gets the policy's *serving* version, the newest
loaded one.

Nothing here knows about gRPC: errors are :mod:`server.errors` types that carry their codes.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from safepolicy.export.artifact import (
    AUDIT_FILENAME,
    METADATA_FILENAME,
    ONNX_FILENAME,
    ArtifactError,
    AuditVerdict,
    ObservationError,
    OnnxPolicy,
    PolicyMetadata,
    PolicyOutputs,
    load_policy,
    read_audit_verdict,
    read_metadata,
    validate_observations,
)
from safepolicy.export.repository import ModelRepository, RepositoryError
from safepolicy.server.errors import (
    BatchSizeError,
    InferenceFailed,
    InvalidObservations,
    NotReady,
    PolicyNotFound,
    VersionNotFound,
)

log = logging.getLogger(__name__)

VersionPolicy = Literal["latest", "all"]
# (file name, size, mtime_ns) of the files that define a version; a change means "reload it"
Signature = tuple[tuple[str, int, int], ...]


def version_signature(version_dir: Path) -> Signature:
    """What identifies a version directory's contents without reading them."""
    entries = []
    for name in (ONNX_FILENAME, METADATA_FILENAME, AUDIT_FILENAME):
        try:
            stat = os.stat(version_dir / name)
        except FileNotFoundError:
            continue
        except OSError as error:  # unreadable (another uid's 0700 directory): retry on change
            entries.append((name, -1, error.errno or 0))
            continue
        entries.append((name, stat.st_size, stat.st_mtime_ns))
    return tuple(entries)


@dataclass(frozen=True)
class LoadedVersion:
    """One policy version ready to act."""

    name: str
    version: int
    policy: OnnxPolicy
    audit: AuditVerdict | None
    signature: Signature

    @property
    def metadata(self) -> PolicyMetadata:
        return self.policy.metadata

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"


@dataclass(frozen=True)
class PolicyEntry:
    """A policy's loaded versions; ``problem`` says why none is servable when empty."""

    name: str
    versions: Mapping[int, LoadedVersion]
    problem: str | None = None

    @property
    def serving(self) -> LoadedVersion | None:
        return self.versions[max(self.versions)] if self.versions else None


@dataclass
class ReloadReport:
    """What one reload changed: ``NAME/VERSION`` labels, failures with their reasons."""

    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    failed: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.loaded or self.unloaded)


class PolicyStore:
    """Loaded policy versions of one model repository, swapped atomically on reload."""

    def __init__(
        self,
        repo: str | os.PathLike[str],
        *,
        version_policy: VersionPolicy = "latest",
        pins: Mapping[str, Sequence[int]] | None = None,
        require_audit: bool = False,
        max_batch_size: int = 1024,
        threads: int = 1,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.repository = ModelRepository(repo)
        self.version_policy = version_policy
        self.pins = {name: sorted(set(versions)) for name, versions in (pins or {}).items()}
        self.require_audit = require_audit
        self.max_batch_size = max_batch_size
        self.threads = threads
        self.providers = list(providers) if providers is not None else ["CPUExecutionProvider"]
        self._snapshot: dict[str, PolicyEntry] = {}
        # versions that failed to load, by signature, so an unchanged broken version is
        # reported once rather than on every poll
        self._failed: dict[tuple[str, int], tuple[Signature, str]] = {}
        self._reload_lock = threading.Lock()

    # ---- reading the snapshot (lock-free: one reference read) ----

    @property
    def ready(self) -> bool:
        """True when at least one policy has a servable version."""
        return any(entry.versions for entry in self._snapshot.values())

    def entries(self) -> list[PolicyEntry]:
        """Every policy the repository holds, servable or not, sorted by name."""
        snapshot = self._snapshot
        return [snapshot[name] for name in sorted(snapshot)]

    def resolve(self, name: str, version: int | None = None) -> LoadedVersion:
        """The loaded version answering ``name`` (and ``version``, or the serving one)."""
        entry = self._snapshot.get(name)
        if entry is None:
            known = ", ".join(sorted(self._snapshot)) or "none"
            raise PolicyNotFound(f"unknown policy {name!r}; served policies: {known}")
        if not entry.versions:
            # the reason names files; a client sees them relative to the repository
            problem = (entry.problem or "").replace(str(self.repository.root), "MODEL_REPO")
            raise NotReady(f"policy {name!r} has no servable version: {problem}")
        if version is None:
            serving = entry.serving
            assert serving is not None
            return serving
        loaded = entry.versions.get(version)
        if loaded is None:
            raise VersionNotFound(
                f"version {version} of policy {name!r} is not served (served: "
                f"{sorted(entry.versions)}); omit the version for the newest, or start the "
                f"server with --version-policy all or --pin {name}={version}"
            )
        return loaded

    def versions_of(self, loaded: LoadedVersion) -> list[int]:
        """The loaded versions of ``loaded``'s policy, sorted (``loaded``'s own at least, if a
        reload swapped the snapshot since it was resolved)."""
        entry = self._snapshot.get(loaded.name)
        return sorted(entry.versions) if entry and entry.versions else [loaded.version]

    # ---- acting ----

    def check_observations(self, loaded: LoadedVersion, observations: np.ndarray) -> np.ndarray:
        """``observations`` as C-contiguous float32 ``[batch, obs_dim]`` with finite values, or
        an INVALID_ARGUMENT error saying what is wrong.

        This is the one validation a request gets: :meth:`run` hands the result to
        :meth:`OnnxPolicy.act_unchecked <export.artifact.OnnxPolicy.act_unchecked>`.
        """
        try:
            observations = validate_observations(
                observations, loaded.metadata.obs_dim, accept_vector=True
            )
        except ObservationError as error:
            raise InvalidObservations(f"policy {loaded.label}: {error}") from error
        batch = observations.shape[0]
        if batch == 0:
            raise BatchSizeError("empty batch: send at least one observation")
        if batch > self.max_batch_size:
            raise BatchSizeError(
                f"batch of {batch} observations exceeds the server's limit of "
                f"{self.max_batch_size}; split the request"
            )
        return observations

    def run(
        self,
        loaded: LoadedVersion,
        observations: np.ndarray,
        *,
        deterministic: bool = True,
        seed: int | None = None,
    ) -> np.ndarray:
        """Actions float32 ``[batch, action_dim]`` for observations that came through
        :meth:`check_observations` (they are not checked again)."""
        rng = None if deterministic else np.random.default_rng(seed)
        try:
            return loaded.policy.act_unchecked(observations, deterministic, rng)
        except ObservationError as error:
            raise InvalidObservations(f"policy {loaded.label}: {error}") from error
        except Exception as error:  # onnxruntime raises untyped errors
            log.exception("inference failed on %s", loaded.label)
            raise InferenceFailed(
                f"policy {loaded.label} failed to compute actions ({type(error).__name__}); "
                "the server log has details"
            ) from error

    def outputs(self, loaded: LoadedVersion, observations: np.ndarray) -> PolicyOutputs:
        """The graph's three outputs (deterministic action, pre-tanh mean and log-std) for
        observations that came through :meth:`check_observations`."""
        try:
            return loaded.policy.outputs(observations)
        except ObservationError as error:
            raise InvalidObservations(f"policy {loaded.label}: {error}") from error
        except Exception as error:  # onnxruntime raises untyped errors
            log.exception("inference failed on %s", loaded.label)
            raise InferenceFailed(
                f"policy {loaded.label} failed to compute its outputs ({type(error).__name__}); "
                "the server log has details"
            ) from error

    def act(
        self,
        name: str,
        version: int | None,
        observations: np.ndarray,
        *,
        deterministic: bool = True,
        seed: int | None = None,
    ) -> tuple[np.ndarray, LoadedVersion]:
        """Resolve, check and run: the actions and the version that computed them."""
        loaded = self.resolve(name, version)
        checked = self.check_observations(loaded, observations)
        return self.run(loaded, checked, deterministic=deterministic, seed=seed), loaded

    # ---- reloading ----

    def reload(self) -> ReloadReport:
        """Re-scan the repository, load what changed, and swap the snapshot atomically."""
        with self._reload_lock:
            report = ReloadReport()
            old = self._snapshot
            new: dict[str, PolicyEntry] = {}
            names = set(self.repository.names()) | set(self.pins)
            for name in sorted(names):
                new[name] = self._reload_policy(name, old.get(name), report)
            for name, entry in old.items():
                kept = new.get(name)
                for version in entry.versions:
                    if kept is None or kept.versions.get(version) is not entry.versions[version]:
                        report.unloaded.append(f"{name}/{version}")
            self._snapshot = new
        for label in report.loaded:
            log.info("loaded %s", label)
        for label in report.unloaded:
            log.info("unloaded %s", label)
        return report

    def _wanted_versions(self, name: str) -> tuple[list[int], str | None]:
        try:
            available = self.repository.versions(name)
        except RepositoryError as error:
            return [], str(error)
        if name in self.pins:
            missing = [v for v in self.pins[name] if v not in available]
            problem = (
                (
                    f"pinned version(s) {missing} not in the repository (available: "
                    f"{available or 'none'})"
                )
                if missing
                else None
            )
            return [v for v in self.pins[name] if v in available], problem
        return available, None

    def _reload_policy(
        self, name: str, previous: PolicyEntry | None, report: ReloadReport
    ) -> PolicyEntry:
        wanted, problem = self._wanted_versions(name)
        single = self.version_policy == "latest" and name not in self.pins
        loaded: dict[int, LoadedVersion] = {}
        reasons: list[str] = [problem] if problem else []
        for version in sorted(wanted, reverse=True):
            candidate, reason = self._load_version(name, version, previous, report)
            if candidate is None:
                reasons.append(f"version {version}: {reason}")
                continue
            loaded[version] = candidate
            if single:
                break
        if not loaded and not wanted and not reasons:
            reasons.append("no versions in the repository")
        return PolicyEntry(
            name, dict(sorted(loaded.items())), None if loaded else "; ".join(reasons)
        )

    def _load_version(
        self, name: str, version: int, previous: PolicyEntry | None, report: ReloadReport
    ) -> tuple[LoadedVersion | None, str]:
        """The version loaded (reused when unchanged), or ``None`` and why not."""
        directory = self.repository.path_for(name, version)
        signature = version_signature(directory)
        old = previous.versions.get(version) if previous else None
        if old is not None and old.signature == signature:
            return old, ""
        failed = self._failed.get((name, version))
        if failed is not None and failed[0] == signature:
            return None, failed[1]
        try:
            # the verdict first: an unaudited version is skipped without loading its model
            audit = read_audit_verdict(directory)
            if self.require_audit and (audit is None or audit.verdict != "PASS"):
                verdict = "not audited" if audit is None else f"audit verdict {audit.verdict}"
                return None, (
                    f"{verdict}, and the server requires PASS (--require-audit); "
                    "run `safepolicy audit` on it"
                )
            if self.require_audit and audit is not None:
                # a PASS only vouches for the limit it was checked against: one obtained
                # with a looser limit than the policy's own says nothing about that budget
                cost_limit = read_metadata(directory).cost_limit
                if audit.cost_limit > cost_limit:
                    return None, (
                        f"audit PASS was against cost_limit {audit.cost_limit:g}, "
                        f"looser than the policy's cost_limit {cost_limit:g}; the "
                        "server requires an audit at the policy's limit or stricter "
                        "(--require-audit); re-run `safepolicy audit` with "
                        f"--cost-limit {cost_limit:g}"
                    )
            policy = load_policy(directory, providers=self.providers, threads=self.threads)
            if policy.metadata.name != name or policy.metadata.version != version:
                raise ArtifactError(
                    f"{directory}: metadata says {policy.metadata.name}/{policy.metadata.version}"
                    "; the directory was renamed or copied, re-export it in place"
                )
        except (ArtifactError, OSError) as error:
            # one unreadable version (written by a job under another uid, say) is marked
            # unavailable; the rest of the repository keeps loading and serving
            reason = (
                str(error)
                if isinstance(error, ArtifactError)
                else f"{directory}: cannot read the version ({error.strerror or error}); make "
                "it readable by the server's user (the exporter honours the umask)"
            )
            self._failed[(name, version)] = (signature, reason)
            report.failed.append((name, version, reason))
            log.error("failed to load %s/%s, keeping what was serving: %s", name, version, reason)
            return None, reason
        self._failed.pop((name, version), None)
        report.loaded.append(f"{name}/{version}")
        return LoadedVersion(name, version, policy, audit, signature), ""
