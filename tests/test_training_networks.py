"""Networks of other shapes: named critic groups of unequal size, per-network sizes, any module."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from training_toys import speed_cost_dataset, toy_context

from safepolicy.training.algorithms.base import adam, component_states, load_component_states
from safepolicy.training.config import ConfigError, RunConfig, set_field
from safepolicy.training.losses import td_targets
from safepolicy.training.networks import CriticEnsemble, ObservationNormalizer


def test_unequal_critic_groups_share_one_fused_ensemble() -> None:
    critics = CriticEnsemble(
        obs_dim=3, action_dim=2, ensemble_size={"reward": 2, "cost": 5}, hidden_sizes=[16]
    )
    observations, actions = torch.randn(8, 3), torch.randn(8, 2)
    q = critics(observations, actions)
    assert q.shape == (7, 8) and critics.group_sizes == [2, 5]
    assert critics.members("reward") == [0, 1] and critics.members("cost") == [2, 3, 4, 5, 6]
    assert torch.equal(
        critics.group(q, "cost"), critics(observations, actions, members=critics.members("cost"))
    )
    # a TD target per group: reward critics share min over 2, cost critics max over 5
    next_q = critics(observations, actions).detach()
    rewards, costs, terminals = torch.randn(8), torch.rand(8), torch.zeros(8)
    targets = td_targets(
        next_q, (rewards, costs), terminals, 0.9, critics.group_sizes, ("min", "max")
    )
    assert torch.allclose(targets[0], rewards + 0.9 * next_q[:2].min(dim=0).values)
    assert torch.allclose(targets[6], costs + 0.9 * next_q[2:].max(dim=0).values)
    with pytest.raises(KeyError, match="no critic group 'value'; groups are reward, cost"):
        critics.members("value")
    with pytest.raises(ValueError, match="at least one member"):
        CriticEnsemble(3, 2, {"reward": 2, "cost": 0})


def test_each_network_role_gets_its_own_hidden_sizes() -> None:
    context = toy_context(speed_cost_dataset(transitions=200), 3.0, 10, hidden_sizes=(32, 32))
    context.network_sizes = {"critic": [64, 64, 64]}
    critics = context.new_critics({"reward": 1, "cost": 3})
    assert [
        param.shape[-1] for name, param in critics.named_parameters() if name.endswith("weight")
    ] == [64, 64, 64, 1]
    actor = context.new_actor()
    assert actor.hidden_sizes == (32, 32)
    assert context.new_actor(hidden_sizes=[8]).hidden_sizes == (8,)
    assert context.new_value(2).trunk[0].out_features == 32

    run = RunConfig()
    set_field(run, "critic_hidden_sizes", "64,64,64")
    assert run.critic_hidden_sizes == [64, 64, 64]
    set_field(run, "critic_hidden_sizes", "none")
    assert run.critic_hidden_sizes is None
    with pytest.raises(ConfigError, match="critic_hidden_sizes must be a comma-separated list"):
        set_field(run, "critic_hidden_sizes", "64,-1")


class NoisePredictor(nn.Module):
    """Stand-in for a network the core does not know (a diffusion or CVAE model)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(ObservationNormalizer(2))
        self.net = nn.Linear(3, 1)

    def forward(self, observations: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        normalised = self.encoder(observations)
        return self.net(torch.cat([normalised, time[:, None]], dim=-1))


class HoldsAnyModule:
    COMPONENTS = ("model", "optimizer")

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.optimizer = adam(self.model.parameters(), lr=1e-2)


def test_any_module_is_placed_and_checkpointed_like_the_built_in_ones() -> None:
    context = toy_context(speed_cost_dataset(transitions=200), 3.0, 10)
    owner = HoldsAnyModule(context.place(NoisePredictor()))
    normaliser = next(
        module for module in owner.model.modules() if isinstance(module, ObservationNormalizer)
    )
    assert torch.equal(normaliser.mean, context.offline.obs_mean.cpu())
    assert not torch.equal(normaliser.std, torch.ones(2))
    loss = owner.model(torch.randn(4, 2), torch.rand(4)).pow(2).mean()
    loss.backward()
    owner.optimizer.step()
    state = component_states(owner, owner.COMPONENTS)
    fresh = HoldsAnyModule(NoisePredictor())
    load_component_states(fresh, fresh.COMPONENTS, state)
    for name, tensor in owner.model.state_dict().items():
        assert torch.equal(fresh.model.state_dict()[name], tensor), name
    assert fresh.optimizer.state_dict()["state"].keys() == state["optimizer"]["state"].keys()
