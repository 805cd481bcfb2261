"""The Learner: holds θ, builds optim Batches, computes adapted weights and runs optim's meta_update."""
from __future__ import annotations

import dataclasses
import logging
import math
from collections import deque
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.learner.torch.torch_learner import TorchLearner

from metacpo_rllib.optim import (
    BadBatchError,
    Batch,
    GaussianMLP,
    NonFiniteError,
    Params,
    adaptation_step,
    inner_steps,
    make_batch,
    meta_update,
    params_of,
)
from metacpo_rllib.optim.advantages import discounted_cumsum
from metacpo_rllib.optim.batch import upper_cost_bound
from metacpo_rllib.optim.cost_estimate import learned_margin, shrink_cost_gradient
from metacpo_rllib.optim.critics import (
    ValueMLP,
    critic_features,
    episode_values,
    fit_critic,
    privileged_vector,
)
from metacpo_rllib.optim.step_check import PendingStep
from metacpo_rllib.optim.surrogate import mean_kl, surrogates
from metacpo_rllib.rllib.module import params_to_weights
from metacpo_rllib.rllib.protocol import RoundOutput, SampleResult

logger = logging.getLogger(__name__)

#: The Learner-state key of the training J_C window (``train_cost_window``).
RECENT_EXCESS_KEY = "metacpo_recent_cost_excess"


def batch_summary(batch: Batch) -> dict[str, float]:
    """What the algorithm reports about one task's batch."""
    return {"task_id": batch.task_id, "mean_return": batch.mean_return,
            "mean_cost": batch.mean_cost, "cost_limit": batch.cost_limit,
            "num_steps": batch.num_steps, "num_episodes": batch.num_episodes,
            "constraint_cost": batch.estimated_cost, "cost_margin": batch.cost_margin,
            "cost_signal_share": batch.cost_signal_share}


def step_record(module: torch.nn.Module, old: Params, new: Params, batch: Batch,
                info: dict[str, float], constrained: bool) -> dict[str, float]:
    """What the calibration ledger keeps of one adaptation step from ``old`` to ``new`` on
    ``batch`` (sampled by ``old``).

    ``predicted_cost_change`` = bᵀ(new − old), b the gradient of the cost surrogate at
    ``old`` (the predicted change of the mean episode cost): bᵀx times the accepted
    line-search fraction, 0 for a rejected step; NaN for unconstrained steps (TRPO,
    Meta-TRPO), which have no cost model. ``kl``: mean KL(π_old ‖ π_new) on the batch's
    states. ``case``: the CPO case of the step. ``accepted``: 0 if the line search kept
    the old parameters.
    """
    case = info.get("case", info.get("outer_case", math.nan))
    accepted = float(info.get("line_search_accepted", 1.0))
    names = list(old)
    with torch.enable_grad():
        leaves = {k: v.detach().clone().requires_grad_(True) for k, v in old.items()}
        _, cost = surrogates(module, leaves, batch)
        grads = torch.autograd.grad(cost, [leaves[k] for k in names], allow_unused=True)
    with torch.no_grad():
        predicted = sum(float((g * (new[k] - old[k])).sum())
                        for k, g in zip(names, grads) if g is not None)
        kl = float(mean_kl(module, old, new, batch.obs))
    return {"case": float(case), "accepted": accepted,
            "predicted_cost_change": float(predicted) if constrained else math.nan,
            "kl": kl}


class CriticData(NamedTuple):
    """One batch's data for the critics' fit: its episodes' observations (raw), the task's
    privileged vector (None without privileged inputs) and the discounted reward- and
    cost-to-go of every step (reward / episode-cost units)."""

    observations: list[np.ndarray]
    privileged: Optional[np.ndarray]
    reward_to_go: torch.Tensor
    cost_to_go: torch.Tensor


class MetaCPOTorchLearner(TorchLearner):
    """A TorchLearner whose update is optim's constrained trust-region step, not SGD.

    Per meta-iteration the algorithm calls (through ``LearnerGroup.foreach_learner``)
    ``begin(T)``, then ``add_round(k, samples)`` for rounds k = 0..K (rounds < K return
    each task's adapted weights φ_i^{k+1}), then ``meta_step()``, which replaces θ in
    the RLModule. ``begin(T)`` + ``adapt_round`` serve test-time adaptation.
    The registered (unused) optimizer only satisfies the Learner API.
    """

    def build(self) -> None:
        super().build()
        threads = getattr(self.config, "torch_num_threads", None)
        if threads:
            torch.set_num_threads(int(threads))
        # J_C − h of each of the latest ``train_cost_window`` training query episodes, over
        # iterations and tasks (oldest first), pooled into the next query batches' J_C
        self._recent_excess: deque[float] = deque(maxlen=self.config.train_cost_window)
        self._iteration = 0  # the meta-iteration begun last (begin)
        self._reset_rounds(0)

    # -- helpers --------------------------------------------------------------------------
    @property
    def policy(self) -> GaussianMLP:
        """The GaussianMLP inside the default RLModule (θ are its parameters)."""
        return self.module[DEFAULT_MODULE_ID].unwrapped().pi

    def theta_weights(self) -> dict[str, Any]:
        """θ as an RLModule state dict (what EnvRunners load)."""
        return params_to_weights(params_of(self.policy), self.policy)

    def adapted_params(self, index: int) -> Params:
        """Task ``index``'s current adapted parameters (θ before any inner step)."""
        phi = self._phi[index]
        return {k: v.detach().clone() for k, v in (phi or params_of(self.policy)).items()}

    def _reset_rounds(self, num_tasks: int) -> None:
        self._phi: list[Optional[Params]] = [None] * num_tasks
        self._support: list[list[Batch]] = [[] for _ in range(num_tasks)]
        self._query: list[Optional[Batch]] = [None] * num_tasks
        # per task, the metric solution of each inner step taken (handed to meta_update)
        self._solves: list[list[torch.Tensor]] = [[] for _ in range(num_tasks)]
        self._dropped: dict[int, str] = {}
        # per task, each batch's data for the critics' fit (critics on)
        self._critic_data: list[list[CriticData]] = [[] for _ in range(num_tasks)]
        # per task, the episode costs of its learning batches so far (kept where a J_C
        # window pools them: test-time adaptation)
        self._episode_costs: list[list[float]] = [[] for _ in range(num_tasks)]
        # per task, its learned margin and, after an adaptation step with a margin rate, the
        # mean cost of the batch the step learned from and the step's predicted change
        self._margins: list[float] = [0.0] * num_tasks
        self._last_step: list[Optional[tuple[float, float]]] = [None] * num_tasks
        # per task, its last adaptation step while it waits for its check
        # (``adaptation_backtracks``; ``check_steps``)
        self._pending: list[Optional[PendingStep]] = [None] * num_tasks

    @property
    def critics(self) -> Optional[tuple[ValueMLP, ValueMLP]]:
        """The module's (reward, cost) critics; None with ``config.critics`` off."""
        if not self.config.critics:
            return None
        module = self.module[DEFAULT_MODULE_ID].unwrapped()
        return module.vf_reward, module.vf_cost

    def _critic_inputs(self, observations: Sequence[Any], privileged: Optional[Any]
                       ) -> list[torch.Tensor]:
        """Per episode, the critics' features at its observations as the policy sees them
        now (through its observation filter, if it has one)."""
        obs_filter = self.policy.obs_filter
        with torch.no_grad():
            return [critic_features(o if obs_filter is None else obs_filter(torch.as_tensor(o)),
                                    privileged) for o in observations]

    def _critic_values(self, index: int, sample: SampleResult, keep: bool
                       ) -> Optional[tuple[list, list]]:
        """Per episode, the current critics' reward and cost values (None with critics
        off); with ``keep`` the episodes' observations and discounted reward- and
        cost-to-go are kept for the critics' fit in ``meta_step``."""
        critics = self.critics
        if critics is None:
            return None
        task = sample.task
        privileged = (privileged_vector(task.params, task.cost_limit)
                      if self.config.critic_privileged else None)
        observations = [ep.obs for ep in sample.episodes]
        if keep:
            rtg = [discounted_cumsum(ep.rewards, self.config.gamma) for ep in sample.episodes]
            ctg = [discounted_cumsum(ep.costs, self.config.cost_gamma)
                   for ep in sample.episodes]
            self._critic_data[index].append(CriticData(
                observations, privileged, torch.as_tensor(np.concatenate(rtg)),
                torch.as_tensor(np.concatenate(ctg))))
        feats = self._critic_inputs(observations, privileged)
        return episode_values(critics[0], feats), episode_values(critics[1], feats)

    def _fit_critics(self, keep: Sequence[int]) -> dict[str, float]:
        """Fit both critics on the kept tasks' batches of this iteration (all rounds), at
        the observations as the next iteration's policy sees them; their final losses
        (``optim.critics.fit_critic``), {} with critics off."""
        critics = self.critics
        data = [d for i in keep for d in self._critic_data[i]]
        if critics is None or not data:
            return {}
        feats = torch.cat([f for d in data
                           for f in self._critic_inputs(d.observations, d.privileged)])
        targets = {"reward": torch.cat([d.reward_to_go for d in data]),
                   "cost": torch.cat([d.cost_to_go for d in data])}
        return {f"critic_loss_{name}": fit_critic(net, feats, targets[name],
                                                  epochs=self.config.critic_epochs,
                                                  lr=self.config.critic_lr)
                for name, net in zip(("reward", "cost"), critics)}

    def _batch(self, index: int, sample: Optional[SampleResult], keep: bool = False,
               cost_history: Sequence[float] = (), margin_fraction: float = 0.0
               ) -> Optional[Batch]:
        """Build task ``index``'s Batch from its learning result (the task's id and cost
        limit come with it); a task with non-finite env output is dropped. With critics
        on, GAE uses their values (``keep``: the batch is kept for their fit; a dropped
        task's batches never are). ``cost_history``: earlier episode costs pooled with the
        batch's into J_C (``make_batch``); ``margin_fraction``: c = J_C + f·h − h (the
        constraint aims at (1 − f)·h; ``train_limit_margin`` for query batches,
        ``adaptation_limit_margin`` for adaptation batches). After an adaptation step with
        a margin rate, the task's margin first learns from that step (``learned_margin``:
        its predicted cost change against this batch's) and is added to c."""
        if sample is None or index in self._dropped:
            return None
        try:
            values = self._critic_values(index, sample, keep)
            batch = make_batch(sample.episodes, task_id=sample.task.task_id,
                               cost_limit=sample.task.cost_limit, values=values,
                               cost_history=cost_history, **self.config.batch_kwargs())
        except BadBatchError as err:
            self._drop(index, str(err))
            return None
        if margin_fraction:
            batch = dataclasses.replace(batch, cost_margin=margin_fraction * batch.cost_limit)
        last = self._last_step[index]
        if last is not None:
            before, predicted = last
            self._margins[index] = learned_margin(
                self._margins[index], batch.mean_cost - before, predicted,
                self.config.adaptation_cost_margin_rate)
            batch = dataclasses.replace(batch,
                                        cost_margin=batch.cost_margin + self._margins[index])
        if self.config.cost_signal_share and self.config.constrained and (
                batch.violating or self.config.cost_signal_share_scope == "all"):
            # sampled with the task's current parameters (θ before its first inner step)
            batch = shrink_cost_gradient(self.policy, self.adapted_params(index), batch)
        return batch

    def _drop(self, index: int, reason: str) -> None:
        """Leave task ``index`` out of this iteration (bad env output or gradient)."""
        self._dropped[index] = reason
        logger.warning("task dropped from this iteration: %s", reason)

    def _steps_or_drop(self, batches: dict[int, Batch],
                       step: Callable[[list[int]], list[Params]]) -> dict[int, dict[str, Any]]:
        """Run ``step(indices)`` (one adaptation step of those tasks, taken together: their
        new parameters); store and return each task's new weights. A task whose gradient is
        non-finite (the one ``NonFiniteError.index`` names; all of them if it names none)
        is dropped and the rest step again."""
        pending = dict(batches)
        while pending:
            indices = list(pending)
            try:
                phis = step(indices)
            except NonFiniteError as err:
                for i in indices if err.index is None else [indices[err.index]]:
                    self._drop(i, f"non-finite gradient in task {pending.pop(i).task_id}'s "
                                  f"step ({err})")
                continue
            for i, phi in zip(indices, phis):
                self._phi[i] = phi
            return {i: params_to_weights(phi, self.policy) for i, phi in zip(indices, phis)}
        return {}

    # -- the per-iteration protocol -------------------------------------------------------
    def begin(self, num_tasks: int, iteration: int = 0) -> dict[str, Any]:
        """Start meta-iteration ``iteration`` (0-based; for an adaptation run: the number
        of training iterations done) over ``num_tasks`` tasks; returns θ."""
        self._iteration = iteration
        self._reset_rounds(num_tasks)
        return self.theta_weights()

    def add_round(self, round_index: int, samples: Sequence[Optional[SampleResult]]
                  ) -> RoundOutput:
        """Take in sampling round ``round_index`` (one learning result per task, None for
        a dropped task).

        Rounds k < K are support batches: the tasks take one optim ``inner_steps`` together
        (their metric solves in one) and their new weights are returned. Round K is the
        query round.
        """
        cfg = self.config.update_config(self._iteration)
        support: dict[int, Batch] = {}

        def take(i: int, batch: Batch) -> None:
            if round_index >= cfg.inner_steps:
                self._query[i] = batch
            else:
                self._support[i].append(batch)
                support[i] = batch

        query = round_index >= cfg.inner_steps

        def history(_: int, sample: SampleResult) -> list[float]:
            if not query:
                return []
            return [excess + sample.task.cost_limit for excess in self._recent_excess]

        summaries, weights = self._over_tasks(
            samples, take, keep=True, history=history,
            margin_fraction=self.config.train_limit_margin if query else 0.0)
        solves: dict[int, torch.Tensor] = {}

        def step(indices: list[int]) -> list[Params]:
            phis, steps = inner_steps(
                self.policy, [self._phi[i] or params_of(self.policy) for i in indices],
                [support[i] for i in indices], cfg, create_graph=False)
            solves.update((i, s.metric_solution) for i, s in zip(indices, steps))
            return phis

        for i, task_weights in self._steps_or_drop(support, step).items():
            weights[i] = task_weights
            self._solves[i].append(solves[i])
        return RoundOutput(summaries, weights, dict(self._dropped))

    def meta_step(self) -> dict[str, float]:
        """optim ``meta_update`` on the tasks with all K + 1 batches; writes the new θ.

        A non-finite meta-gradient (or a non-finite candidate θ) skips the update: θ is
        left unchanged and ``updates_skipped`` is 1 in the returned statistics. Then
        (:meth:`_end_iteration`) the observation filter takes in the iteration's
        observations and the critics are fitted (their final losses ``critic_loss_reward``
        / ``critic_loss_cost`` in the statistics).
        """
        cfg = self.config.update_config(self._iteration)
        keep = [i for i, q in enumerate(self._query)
                if q is not None and i not in self._dropped]
        if not keep:
            self._reset_rounds(0)
            return {"num_tasks_updated": 0.0, "updates_skipped": 0.0}
        policy = self.policy
        try:
            new_theta, info = meta_update(policy, params_of(policy),
                                          [self._support[i] for i in keep],
                                          [self._query[i] for i in keep], cfg,
                                          solves=[self._solves[i] for i in keep])
            if not all(bool(torch.isfinite(v).all()) for v in new_theta.values()):
                raise NonFiniteError("the new θ has NaN or inf")
        except NonFiniteError as err:
            ids = [self._query[i].task_id for i in keep]
            logger.warning("update skipped: non-finite meta-gradient over tasks %s (%s)",
                           ids, err)
            info = {"num_tasks_updated": 0.0, "updates_skipped": 1.0}
        else:
            with torch.no_grad():
                for name, param in policy.named_parameters():
                    param.copy_(new_theta[name])
            info = {**info, "num_tasks_updated": float(len(keep)), "updates_skipped": 0.0}
        self._recent_excess.extend(float(cost) - query.cost_limit
                                   for query in (self._query[i] for i in keep)
                                   for cost in query.ep_costs)
        return {**info, **self._end_iteration(keep)}

    def _end_iteration(self, keep: Sequence[int]) -> dict[str, float]:
        """After θ's update (or its skip): merge the iteration's observations into the
        observation filter, then fit the critics at the filtered observations; the
        critics' statistics."""
        self._update_obs_filter(keep)
        fitted = self._fit_critics(keep)
        self._reset_rounds(0)
        return fitted

    def _update_obs_filter(self, keep: Sequence[int]) -> None:
        """Merge the observations of this iteration's batches (every round of the tasks in
        ``keep``) into the policy's observation filter, if it has one. Called once per
        meta-iteration, after θ's update: the filter the batches were sampled with is the
        one their update used; the next iteration samples with the new one. Test-time
        adaptation leaves the filter as training left it."""
        obs_filter = self.policy.obs_filter
        if obs_filter is not None:
            obs_filter.update(torch.cat([b.obs for i in keep
                                         for b in [*self._support[i], self._query[i]]]))

    def adapt_round(self, samples: Sequence[Optional[SampleResult]], update: bool
                    ) -> RoundOutput:
        """Test-time adaptation: summarise each task's batch and, if ``update``, take one
        optim ``adaptation_step`` from its current parameters; θ is left unchanged.

        With ``update`` the output also carries ``steps``: per task (None if dropped) the
        step's calibration record, :func:`step_record`."""
        records: list[Optional[dict[str, float]]] = [None] * len(samples)
        window = self.config.adaptation_cost_window

        def history(i: int, _: SampleResult) -> list[float]:
            return self._episode_costs[i][-window:] if window else []

        def step(i: int, batch: Batch) -> Optional[dict[str, Any]]:
            if window:
                self._episode_costs[i].extend(float(c) for c in batch.ep_costs)
            if not update:
                return None
            cfg = self.config.adaptation_update_config(
                cost_free=batch.cost_free,
                violating=self.config.constrained and batch.violating,
                iteration=self._iteration)
            params = self.adapted_params(i)
            infos: list[dict[str, float]] = []

            def take(_: list[int]) -> list[Params]:
                new, info = adaptation_step(self.policy, params, batch, cfg)
                infos.append(info)
                return [new]

            weights = self._steps_or_drop({i: batch}, take).get(i)
            if weights is not None:
                records[i] = self._record_step(i, params, self._phi[i], batch, infos[-1],
                                               cfg.constrained)
                if self.config.adaptation_backtracks and cfg.constrained:
                    self._pending[i] = PendingStep(params, self._phi[i], batch, infos[-1],
                                                   1.0, self.config.adaptation_backtracks)
            return weights

        summaries, weights = self._over_tasks(
            samples, step, history=history,
            margin_fraction=self.config.adaptation_limit_margin if self.config.constrained
            else 0.0)
        return RoundOutput(summaries, weights, dict(self._dropped),
                           records if update else None)

    def _record_step(self, i: int, before: Params, after: Params, batch: Batch,
                     info: dict[str, float], constrained: bool) -> dict[str, float]:
        """Task ``i``'s adaptation step from ``before`` to ``after`` on ``batch``: its
        calibration record (:func:`step_record`), which the learned margin follows."""
        record = step_record(self.policy, before, after, batch, info, constrained=constrained)
        if self.config.adaptation_cost_margin_rate and constrained:
            self._last_step[i] = (batch.mean_cost, record["predicted_cost_change"])
        return record

    def check_steps(self, samples: Sequence[Optional[SampleResult]]
                    ) -> dict[int, tuple[dict[str, Any], dict[str, float]]]:
        """Test-time adaptation with ``adaptation_backtracks``: check each task's last step
        on ``samples[i]``, fresh episodes of the stepped policy (the next learning batch),
        before they are used (``optim.step_check``; with ``adaptation_backtrack_bound``
        their mean's one-sided 95% upper bound is held to the limit). Returns, per task whose step is
        rejected, the weights to sample again (the step halved, or the parameters before
        it once no halving is left) and the step's new calibration record (with its
        ``fraction``); tasks not in it keep their step and their samples."""
        retry = {}
        for i, sample in enumerate(samples):
            pending = self._pending[i]
            if pending is None or sample is None:
                continue
            costs = [float(np.sum(ep.costs)) for ep in sample.episodes]
            bound = (upper_cost_bound(costs) if self.config.adaptation_backtrack_bound
                     and len(costs) > 1 else None)
            nxt = pending.checked(float(np.mean(costs)), bound)
            self._pending[i] = nxt if nxt is not None and nxt.fraction > 0 else None
            if nxt is None:
                continue
            self._phi[i] = nxt.params
            record = self._record_step(i, nxt.before, self._phi[i], nxt.batch,
                                       dict(nxt.info), constrained=True)
            if nxt.fraction == 0:
                record["accepted"] = 0.0
            record["fraction"] = nxt.fraction
            retry[i] = (params_to_weights(self._phi[i], self.policy), record)
        return retry

    def _over_tasks(self, samples: Sequence[Optional[SampleResult]],
                    handle: Callable[[int, Batch], Optional[dict[str, Any]]],
                    keep: bool = False,
                    history: Callable[[int, SampleResult], Sequence[float]] = lambda *_: (),
                    margin_fraction: float = 0.0
                    ) -> tuple[list[Optional[dict]], list[Optional[dict]]]:
        """Build each task's Batch (dropping bad ones; ``keep``: kept for the critics'
        fit; ``history(i, sample)``: the earlier episode costs pooled into its J_C;
        ``margin_fraction``: see :meth:`_batch`), summarise it and let ``handle`` return
        the task's next weights (or None); returns (summaries, weights)."""
        summaries: list[Optional[dict]] = [None] * len(samples)
        weights: list[Optional[dict]] = [None] * len(samples)
        for i, sample in enumerate(samples):
            batch = self._batch(i, sample, keep, () if sample is None else history(i, sample),
                                margin_fraction)
            if batch is None:
                continue
            summaries[i] = batch_summary(batch)
            weights[i] = handle(i, batch)
        return summaries, weights

    # -- checkpoints ----------------------------------------------------------------------
    def get_state(self, components=None, *, not_components=None, **kwargs) -> dict[str, Any]:
        """RLlib's Learner state plus the training J_C window (``train_cost_window``)."""
        state = super().get_state(components, not_components=not_components, **kwargs)
        state[RECENT_EXCESS_KEY] = list(self._recent_excess)
        return state

    def set_state(self, state: dict[str, Any]) -> None:
        super().set_state(state)
        if RECENT_EXCESS_KEY in state:  # (absent from older checkpoints)
            self._recent_excess.clear()
            self._recent_excess.extend(float(e) for e in state[RECENT_EXCESS_KEY])

    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out) -> Any:
        raise NotImplementedError(
            "MetaCPOTorchLearner has no SGD loss; its update is meta_step()")
