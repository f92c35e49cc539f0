"""Marvel (Chen et al., seed 002): offline CPQ, value pre-alignment, online SAC-Lag with aPID.

``safepolicy train marvel --task T --dataset FILE.h5 --cost-limit K --online-steps N``.
Stages, in the paper's order (its Appendix A):
1. ``offline``: CPQ (cpq.py) on the dataset, ``offline_steps`` updates. Or skipped:
   ``--reuse-stage offline=RUN_DIR`` starts from an earlier ``train cpq`` run on the same
   dataset (its ``checkpoints/stage-cpq.pt``), or from another Marvel run's offline stage;
2. ``vpa``: value pre-alignment (vpa.py), fitted-Q evaluation of the frozen CPQ policy on
   the dataset from the pretrained Q and Qc (in place, targets included), ``alignment.steps``
   updates (``--set alignment.NAME=VALUE`` for its settings); left out with
   ``--set vpa=false`` (the paper's "Warm Start" and "aPID only" ablations);
3. ``online``: SAC-Lag finetuning of CPQ's actor and the (aligned) critics in the task's
   vectorised environments, sac_lag.py's update and online learner (one shared code path),
   ``online_steps`` vector environment steps; the multiplier is ``multiplier`` (aPID by
   default; ``--set multiplier=dual-ascent`` or ``pid`` for the ablations). Each minibatch
   draws ``online_fraction`` of its rows from the online replay and the rest from the dataset.

The online stage starts from CPQ's actor, critics, target critics and SAC temperature; its
optimisers start fresh (Marvel's online learning rates differ from the offline ones).
The table's settings (paper Table 6) are the defaults of the online fields below.

Departures, and why:
- The multiplier updates once per vector step in which episodes finished, from their mean
  episode cost (sac_lag.py explains the cadence), with FSRL's PID gains as aPID's initial
  gains; the paper's gains (1e-4, 1e-5, 1e-5) are per training iteration, a cadence whose
  measured cost repeats between episode ends.
- The online replay can be mixed with the dataset (``online_fraction`` < 1), which the
  paper uses only for its "SAC with an offline replay buffer" baseline; the default is online
  rows only, as Marvel finetunes.
- Online, the cost critics combine by their minimum (``cost_reduction``), as CPQ's and VPA's
  targets did, so finetuning does not start by moving the cost values' fixed point
  (SAC-Lag from scratch uses the maximum).
- The rest as in cpq.py and sac_lag.py (their own departure lists).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from safepolicy.training.algorithms.base import Logs, TrainingContext
from safepolicy.training.algorithms.cpq import CPQ, CPQConfig
from safepolicy.training.algorithms.cpq import STAGE as CPQ_STAGE
from safepolicy.training.algorithms.sac_lag import OnlineConfig, OnlineLearner, SACLagUpdate
from safepolicy.training.algorithms.vpa import STAGE as VPA
from safepolicy.training.algorithms.vpa import ValuePreAlignment, VPAConfig
from safepolicy.training.config import param
from safepolicy.training.networks import SquashedGaussianActor
from safepolicy.training.registry import AlgorithmSpec, Stage, StageSource

OFFLINE, ONLINE = "offline", "online"


class MarvelConfig(OnlineConfig):
    """Marvel: CPQ offline, value pre-alignment, SAC-Lag finetuning with aPID."""

    offline_steps: int = param(
        100_000, "CPQ updates in the offline stage", "public code: 5e5; OSRL CPQ: 1e5", gt=0
    )
    vpa: bool = param(
        True,
        "align Q and Qc to the offline policy before finetuning (false: Warm Start)",
        "Marvel: true",
    )
    online_steps: int = param(
        500,
        "online finetuning length in vector environment steps (--online-steps)",
        "Marvel: 100-500 online steps",
        gt=0,
    )
    online_fraction: float = param(
        1.0,
        "share of each online minibatch from the online replay (the rest from the dataset)",
        "Marvel: 1",
        ge=0.0,
        le=1.0,
    )
    cpq: CPQConfig = Field(default_factory=CPQConfig)
    alignment: VPAConfig = Field(default_factory=VPAConfig)  # the vpa stage's settings
    # the online stage's settings, Marvel's Table 6 where it gives one
    actor_lr: float = param(5e-5, "finetuning actor learning rate", "Marvel: 5e-5", gt=0.0)
    critic_lr: float = param(
        3e-5, "finetuning reward critics' learning rate", "Marvel: 3e-5", gt=0.0
    )
    cost_critic_lr: float | None = param(
        8e-5, "finetuning cost critics' learning rate", "Marvel: 8e-5", gt=0.0
    )
    tau: float = param(5e-3, "target critics' Polyak rate", "Marvel: 5e-3", gt=0.0, le=1.0)
    warmup_steps: int = param(
        0,
        "first online transitions with uniform random actions",
        "Marvel: none (the offline policy acts from the start)",
        ge=0,
    )
    replay_capacity: int = param(1_000_000, "online replay buffer size", "Marvel: 1e6", gt=0)
    cost_reduction: Literal["max", "min", "mean"] = param(
        "min", "how the cost critics combine online", "CPQ's and VPA's targets: min"
    )


class Marvel:
    """CPQ's networks, finetuned online by SAC-Lag after value pre-alignment."""

    def __init__(self, config: MarvelConfig, context: TrainingContext) -> None:
        self.config, self.context = config, context
        self.cpq = CPQ(config.cpq, context)  # needs the dataset: a clear error without one
        # VPA updates CPQ's critics and their targets in place, the actor frozen
        self.alignment = ValuePreAlignment(
            config.alignment, context, self.cpq.actor, self.cpq.critic, self.cpq.target_critic
        )
        # the online update shares CPQ's actor and critics (the same modules, finetuned)
        self.update = SACLagUpdate(
            config,
            context,
            self.cpq.actor,
            self.cpq.critic,
            initial_temperature=config.cpq.initial_temperature,
        )
        self.learner = OnlineLearner(
            config,
            context,
            self.update,
            offline=context.offline,
            online_fraction=config.online_fraction,
        )

    @property
    def actor(self) -> SquashedGaussianActor:
        return self.cpq.actor

    def start_stage(self, stage: str) -> None:
        """The online stage starts from the pretrained (and aligned) critics' targets and
        CPQ's temperature."""
        if stage == ONLINE:
            self.update.target_critics.load_state_dict(self.cpq.target_critic.state_dict())
            with torch.no_grad():
                self.update.log_temperature.copy_(self.cpq.log_temperature)

    def step(self, stage: str) -> Logs:
        if stage == OFFLINE:
            return self.cpq.step(stage)
        if stage == VPA:
            return self.alignment.step()
        return self.learner.step()

    def state_dict(self) -> dict[str, Any]:
        return {
            "cpq": self.cpq.state_dict(),
            "vpa": self.alignment.state_dict(),
            "online": self.learner.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cpq.load_state_dict(state["cpq"])
        self.alignment.load_state_dict(state["vpa"])
        self.learner.load_state_dict(state["online"])


def load_cpq_run(marvel: Marvel, cpq_state: dict[str, Any]) -> None:
    """``--reuse-stage offline=RUN_DIR`` with a ``train cpq`` run: its CPQ state becomes the
    offline stage's result (the online learner is untouched: it has not started)."""
    try:
        marvel.cpq.load_state_dict(cpq_state)
    except (RuntimeError, KeyError) as error:
        raise ValueError(
            "--reuse-stage offline: the cpq run's networks do not fit this run's "
            "(run.hidden_sizes, cpq.* sizes must be the same); "
            " ".join(str(error).split())[:300]
        ) from None


def marvel_stages(config: MarvelConfig, run: Any) -> list[Stage]:
    """offline, vpa (unless vpa=false), online."""
    stages = [Stage(OFFLINE, config.offline_steps)]
    if config.vpa:
        stages.append(Stage(VPA, config.alignment.steps))
    return [*stages, Stage(ONLINE, config.online_steps)]


SPEC = AlgorithmSpec(
    name="marvel",
    config_type=MarvelConfig,
    build=Marvel,
    stages=marvel_stages,
    summary="Marvel: CPQ offline, value pre-alignment, SAC-Lag finetuning online with aPID "
    "(--online-steps counts vector environment steps)",
    stage_sources={OFFLINE: StageSource("cpq", CPQ_STAGE, load_cpq_run)},
)
