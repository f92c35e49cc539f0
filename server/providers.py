"""Which onnxruntime execution providers the server's sessions use.

The ``onnx_providers`` setting (``--onnx-providers`` / ``SAFEPOLICY_SERVER_ONNX_PROVIDERS``)
is one of:

- ``auto`` (the default): CUDA then CPU when this onnxruntime build offers CUDA
  (``onnxruntime-gpu``, the ``server-gpu`` extra), otherwise CPU alone;
- ``cpu`` or ``cuda``: exactly that (``cuda`` keeps CPU as onnxruntime's fallback for the
  nodes CUDA cannot run);
- a comma-separated list of onnxruntime provider names in priority order, e.g.
  ``TensorrtExecutionProvider,CUDAExecutionProvider,CPUExecutionProvider``.

Asking for a provider this build lacks is a settings error naming what is available, not a
silent fall back to CPU. A build can list CUDA and still fail to start it (no driver, no
device); onnxruntime then runs the session on CPU, so what the server reports
(:func:`session_providers`) is what each session actually got, not what was asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from safepolicy.server.settings import SettingsError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
ALIASES = {"cpu": [CPU], "cuda": [CUDA, CPU]}


class ProviderError(SettingsError):
    """An ``onnx_providers`` setting this onnxruntime build cannot honour."""


def available_providers() -> list[str]:
    """The execution providers compiled into the installed onnxruntime."""
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def resolve_providers(setting: str, available: Sequence[str] | None = None) -> list[str]:
    """The provider list for ``setting`` (see the module docstring), checked against
    ``available`` (default: this onnxruntime build); raises :class:`ProviderError`."""
    offered = list(available) if available is not None else available_providers()
    choice = setting.strip()
    if choice.lower() == "auto":
        return [CUDA, CPU] if CUDA in offered else [CPU]
    wanted = ALIASES.get(choice.lower()) or [p.strip() for p in choice.split(",") if p.strip()]
    if not wanted:
        raise ProviderError(
            "onnx_providers is empty; use auto, cpu, cuda or a comma-separated "
            "list of onnxruntime provider names"
        )
    missing = [p for p in wanted if p not in offered]
    if missing:
        hint = (
            " (install the server-gpu extra, onnxruntime-gpu, for CUDA)" if CUDA in missing else ""
        )
        raise ProviderError(
            f"onnx_providers asks for {', '.join(missing)}, which this "
            f"onnxruntime build does not have; it offers "
            f"{', '.join(offered)}{hint}. Use auto to pick what is there"
        )
    return wanted


def session_providers(session: Any) -> list[str]:
    """The providers an onnxruntime session really runs on, in priority order."""
    return list(session.get_providers())


def primary_provider(providers: Sequence[str]) -> str:
    """Short name of the first provider (``CUDAExecutionProvider`` -> ``cuda``), for labels."""
    if not providers:
        return "none"
    name = providers[0]
    return name.removesuffix("ExecutionProvider").lower() or name
