"""Batches from episodes: GAE, the linear baseline, units of the cost surrogate, bad input."""
import numpy as np
import pytest
import torch

from metacpo_rllib.optim import BadBatchError, EpisodeData, make_batch
from metacpo_rllib.optim.advantages import discounted_cumsum, gae


def episode(t=5, seed=0, cost_value=1.0):
    rng = np.random.default_rng(seed)
    return EpisodeData(obs=rng.normal(size=(t, 3)).astype(np.float32),
                       actions=rng.normal(size=(t, 2)).astype(np.float32),
                       logp=rng.normal(size=t).astype(np.float32),
                       rewards=rng.normal(size=t).astype(np.float32),
                       costs=np.full(t, cost_value, dtype=np.float32))


def test_discounted_cumsum_and_gae_by_hand():
    assert discounted_cumsum(np.array([1.0, 2.0, 3.0]), 0.5) == pytest.approx([2.75, 3.5, 3.0])
    values, rewards = np.array([0.5, 0.2]), np.array([1.0, 2.0])
    # delta_0 = 1 + 0.9*0.2 - 0.5 = 0.68 ; delta_1 = 2 - 0.2 = 1.8 (episode end: V = 0)
    assert gae(values, rewards, 0.9, 0.5) == pytest.approx([0.68 + 0.45 * 1.8, 1.8])
    # lam = 1 and V = 0: advantages are the discounted returns-to-go
    assert gae(np.zeros(3), np.ones(3), 1.0, 1.0) == pytest.approx([3.0, 2.0, 1.0])


def test_batch_fields_and_units():
    eps = [episode(5, 0, 1.0), episode(7, 1, 0.0)]
    batch = make_batch(eps, task_id=4, cost_limit=2.0)
    assert batch.num_steps == 12 and batch.num_episodes == 2
    assert batch.ep_costs.tolist() == [5.0, 0.0]
    assert batch.mean_cost == 2.5 and batch.constraint_value == pytest.approx(0.5)
    assert batch.task_id == 4 and batch.obs.dtype == torch.float32
    assert abs(float(batch.adv_reward.mean())) < 1e-5
    assert float(batch.adv_reward.std()) == pytest.approx(1.0, abs=0.1)


def test_baseline_explains_a_predictable_signal():
    # cost 1 on steps whose first observation is positive: the linear baseline fits it,
    # so the cost advantages are much smaller than the raw costs-to-go
    eps = []
    for i in range(20):
        ep = episode(50, i)
        ep.costs = (ep.obs[:, 0] > 0).astype(np.float32)
        eps.append(ep)
    batch = make_batch(eps, cost_gamma=0.0, cost_lam=0.0)
    raw = np.concatenate([e.costs for e in eps])
    assert float(batch.adv_cost.pow(2).mean()) < 0.5 * float(np.mean((raw - raw.mean()) ** 2))


@pytest.mark.parametrize("field", ["obs", "rewards", "costs"])
def test_non_finite_env_output_names_field_and_task(field):
    ep = episode()
    getattr(ep, field)[1] = np.nan
    with pytest.raises(BadBatchError, match=f"{field}.*task 9") as err:
        make_batch([ep], task_id=9)
    assert err.value.task_id == 9


def test_no_episodes_is_an_error():
    with pytest.raises(ValueError, match="episodes"):
        make_batch([], task_id=1)
