"""In-process cost of the server's Act handler beyond the echo + onnxruntime handler.

Both handlers are called directly on one event loop (no network, no grpc) with the same
policy (MLP 256x256, obs_dim 60) and request, alternating in 7 rounds of 5000 calls; the
median difference is the server's own per-call Python work. ``TREE`` is a source tree
(default: this one), e.g. one exported with ``git archive REF | tar -x -C DIR``.

    python benchmarks/serve_handler_cost.py [TREE]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

root = sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, root)
from safepolicy.server.app import PolicyServer  # noqa: E402
from safepolicy.server.client import act_request  # noqa: E402
from safepolicy.server.settings import ServerSettings  # noqa: E402
from safepolicy.server.testing import make_policy  # noqa: E402

sys.path.insert(0, root + "/benchmarks")
from serve_latency import EchoServicer  # noqa: E402


class Context:
    """The one ServicerContext method the Act path calls."""

    def time_remaining(self) -> None:
        return None


async def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    make_policy(tmp, "bench", 1, obs_dim=60, action_dim=2, hidden_sizes=(256, 256))
    server = PolicyServer(ServerSettings(repo=tmp, metrics_port=None, poll_interval_s=0))
    server.store.reload()
    servicer: Any
    try:  # since issue 16
        from safepolicy.server.policy_service import PolicyServicer

        servicer = PolicyServicer(server.plane, server.outcomes, server.reload)
    except ImportError:  # before: the servicer lived in app.py
        from safepolicy.server.app import PolicyServicer  # type: ignore[attr-defined,no-redef]

        servicer = PolicyServicer(server)
    echo = EchoServicer(2, str(tmp / "bench" / "1"))
    request = act_request("bench", np.random.default_rng(0).normal(size=60).astype(np.float32))
    ctx: Any = Context()
    gaps: list[float] = []
    for _ in range(7):
        times: dict[str, float] = {}
        for name, fn in (("echo", echo.Act), ("server", servicer.Act)):
            for _ in range(500):
                await fn(request, ctx)
            started = time.perf_counter()
            for _ in range(5000):
                await fn(request, ctx)
            times[name] = (time.perf_counter() - started) / 5000 * 1e6
        gaps.append(times["server"] - times["echo"])
    print(
        f"{root}: server - echo+onnxruntime handler, median of 7 rounds: "
        f"{statistics.median(gaps):.1f} us/call (rounds: {', '.join(f'{g:.1f}' for g in gaps)})"
    )


if __name__ == "__main__":
    asyncio.run(main())
