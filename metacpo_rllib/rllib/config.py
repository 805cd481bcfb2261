"""MetaCPOConfig and its three variants (MetaTRPO, CPO, TRPO): one config class, two switches."""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Optional

import numpy as np
from ray.rllib.algorithms.algorithm_config import AlgorithmConfig, NotProvided
from ray.rllib.core.rl_module.rl_module import RLModuleSpec

from metacpo_rllib.algorithms import algorithm_info
from metacpo_rllib.envs import FAMILIES, make_family
from metacpo_rllib.envs.base import check_cost_limit
from metacpo_rllib.optim.critics import DEFAULT_CRITIC_HIDDEN, privileged_vector
from metacpo_rllib.rllib.registry import algorithm_class, family_overrides, register_envs
from metacpo_rllib.rllib.module import DEFAULT_HIDDEN, DEFAULT_INIT_LOG_STD, GaussianMLPModule

_UNSET = NotProvided

#: The warning of ``training(cost_limit=...)`` (the deprecated name of ``train_cost_limit``).
COST_LIMIT_DEPRECATED = ("cost_limit is deprecated: use train_cost_limit (the training "
                         "tasks' cost limit; same value)")


def _bad(field: str, why: str, value: Any) -> None:
    raise ValueError(f"{field}: {why}, got {value!r}")


def _train_cost_limit(train_cost_limit: Any, cost_limit: Any) -> Any:
    """``train_cost_limit``, or the value of its deprecated name ``cost_limit`` (warned)."""
    if cost_limit is _UNSET:
        return train_cost_limit
    if train_cost_limit is not _UNSET:
        raise ValueError("cost_limit, train_cost_limit: both set; cost_limit is the deprecated "
                         "name of train_cost_limit, set only train_cost_limit")
    warnings.warn(COST_LIMIT_DEPRECATED, FutureWarning, stacklevel=3)
    return cost_limit


#: RLlib callbacks of sampled episodes and batches, which the Meta-CPO sampler never calls.
_EPISODE_HOOKS = ("on_episode_created", "on_episode_start", "on_episode_step",
                  "on_episode_end", "on_sample_end")


def _overrides(cls: Any, hook: str) -> bool:
    """Whether callbacks class ``cls`` defines ``hook`` itself (not RLlib's no-op)."""
    from ray.rllib.callbacks.callbacks import RLlibCallback

    own = getattr(cls, hook, None)
    return own is not None and own is not getattr(RLlibCallback, hook, None)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


class MetaCPOConfig(AlgorithmConfig):
    """Config of Meta-CPO and, through the switches ``meta`` / ``constrained``, of
    Meta-TRPO, CPO and TRPO (all run the same training step and the same optim update).

    ``meta=False`` means no inner loop (``inner_steps`` is 0); ``constrained=False``
    means TRPO steps (the cost constraint is ignored by the update, still measured).
    """

    #: This class's row of ``algorithms.ALGORITHM_TABLE`` (its Algorithm class and the
    #: defaults of the switches ``meta`` / ``constrained``); the variants override it.
    _algorithm: str = "MetaCPO"

    def __init__(self, algo_class: Optional[type] = None) -> None:
        super().__init__(algo_class=algo_class or algorithm_class(self._algorithm))
        info = algorithm_info(self._algorithm)
        meta = self.meta = info.meta
        self.constrained = info.constrained
        self.inner_steps = 1 if meta else 0
        self.tasks_per_iteration = 4
        # 8, not 4: with 4, PointCircle training ended above its limit on average
        # (research/results/training_controls_pointcircle.json)
        self.episodes_per_task = 8
        self.train_cost_limit = None
        self.trust_region_delta = 0.01
        self.trust_region_schedule = None  # [[iteration, delta], ...]: see training()
        # 0.003, the inner radius every result on record trained with (make train,
        # tune_configs/*_compare.yaml), where the PointCircle sweep of
        # tune_configs/pointcircle_investigate.yaml pointed; 0.01 before it.
        self.inner_delta = 0.003
        self.metric = "fisher"
        self.backend = "closed_form"
        self.cg_iters = 10
        self.cg_damping = 0.1
        self.fisher_stride = 5  # the Fisher metric on every 5th state (see training())
        self.line_search_steps = 15
        self.line_search_decay = 0.8
        self.gamma = 0.99
        self.lambda_ = 0.95
        self.cost_gamma = 1.0
        self.cost_lambda = 0.95
        self.first_order = False
        # How batch costs enter the constrained step (optim.cost_estimate, cpo.classify).
        # On by default: with the three off (the textbook CPO step) PointCircle training
        # ends far above its limit and adaptation raises the cost step after step
        # (docs/SAFETY_ABLATION.md).
        self.cost_signal_share = True
        # Which batches the signal share shrinks: "violating" (c > 0) only, or "all".
        # On a satisfied batch the step follows the reward gradient and a shrunk cost
        # gradient only loosens its constraint (bᵀx ≤ −c/ρ̂), so that step raises the cost
        # by up to 1/ρ̂ times its slack (docs/RESULTS.md, "Signal share scope").
        self.cost_signal_share_scope = "violating"
        self.cost_upper_bound = True
        self.recover_when_violating = True
        # J_C of training's query batches pools the latest N query episodes of earlier
        # iterations (0: each batch alone); see training().
        self.train_cost_window = 0
        # Training's outer constraint aims at (1 − f)·h instead of h (0: at h). At 0.5 on
        # PointCircle (research/results/train_margin_pointcircle.json) adaptation on the
        # tighter walls is safer from step 2 on, one seed in six misses its training limit
        # and `test` loses one task-step of 180; not a default.
        self.train_limit_margin = 0.0
        # A curriculum: the first curriculum_iterations meta-iterations draw their training
        # tasks with curriculum_ranges in place of env_config's ``ranges`` (0 / None: off).
        # CarCircleHazard met its adaptation target from θ trained 50 iterations on its own
        # train ranges, then 50 on twice the hazards (research/results/
        # carcirclehazard_curriculum_eps64*.json); not a default.
        self.curriculum_iterations = 0
        self.curriculum_ranges = None
        # Factors on the radius of training's inner steps whose batch saw no cost / has
        # c > 0 (optim.meta.inner_radius); 1.0, 1.0: every inner step at inner_delta.
        # 0.25 with adaptation_cost_free_scale 0.125 kept more PointCircle tasks within h
        # over seeds 0-5 than 1.0 with 0.25 (docs/results/PointCircle*/comparison.json,
        # research/results/return_settings_seeds_pointcircle.json).
        self.inner_cost_free_scale = 0.25
        self.inner_recovery_scale = 1.0
        # Factor on the outer (training) step's radius when its c > 0 (1.0: off). 3.0 with
        # theta_cost_constraint and 8 episodes per task ended PointCircle training within
        # 1.1 h on average for CPO and Meta-CPO, where 1.0 did not
        # (research/results/training_controls_pointcircle.json).
        self.outer_recovery_scale = 3.0
        # Meta-CPO's outer step also keeps θ's own cost (optim.meta.meta_update): the
        # training limit is a promise about θ, which the adapted policies' cost alone
        # does not keep.
        self.theta_cost_constraint = True
        # Test-time adaptation only: the episodes per task in each step's learning batch
        # (None: episodes_per_task), the steps' trust-region radius (None: inner_delta for
        # the meta algorithms, trust_region_delta for CPO / TRPO), how many of a task's
        # episodes from its earlier adaptation steps are pooled into J_C, and the factors
        # on the radius of a step whose batch saw no cost and of one with c > 0, and the
        # rate of the margin learned from each step's predicted and realised cost change.
        # The defaults held the limits best on PointCircle (research/results/
        # adaptation_settings_pointcircle.json, adaptation_defaults_12tasks_pointcircle.json,
        # return_settings_seeds_pointcircle.json for the eighth on cost-free batches,
        # docs/results/PointCircle*/comparison.json): 32 episodes per adaptation batch cost
        # 4x the training batch's samples per step; None, 0, 1.0, 1.0, 0 turn them off.
        # adaptation_cost_room (0: off) caps the radius of a step below its limit by the
        # room h − J_C (optim.meta.room_capped); measured on PointButton and CarCircleHazard,
        # not a default. adaptation_backtracks (0: off) checks each step on the next
        # learning batch and halves a step whose policy then costs more than h and the
        # batch it learned from (optim.step_check); adaptation_backtrack_bound holds the
        # batch's upper bound instead of its mean to h. Measured on both families, not a
        # default: the batch that passes reads low (research/results/pointbutton_metacpo.json,
        # carcirclehazard_metacpo.json, rows bt2 and bt2+ucb1). adaptation_backtrack_fresh
        # learns the next step from a fresh batch instead of the one that passed the check:
        # that bias goes, the misses stay (rows bt2+fresh1, bt2+ucb1+fresh1), not a default.
        self.adaptation_episodes_per_task = 32
        # adaptation_first_episodes_per_task (None: adaptation_episodes_per_task): episodes
        # per task in the first adaptation batch only, the one the first step learns θ's
        # cost from; its rare costly episodes are what a small batch misses.
        self.adaptation_first_episodes_per_task = None
        self.adaptation_delta = None
        self.adaptation_cost_window = 64
        self.adaptation_cost_free_scale = 0.125
        self.adaptation_recovery_scale = 6.0
        self.adaptation_cost_margin_rate = 0.0
        self.adaptation_cost_room = 0.0
        # adaptation_limit_margin f (0: off): adaptation steps aim at (1 − f)·h, as
        # train_limit_margin does for training's outer step; every cost is still scored
        # against h. Measured at 0.5 on CarCircleHazard and PointButton (research/results/
        # carcirclehazard_curriculum*.json, pointbutton_metacpo.json, rows lim0.5): it
        # stops the late creep of the cost, not the early misses; not a default.
        self.adaptation_limit_margin = 0.0
        self.adaptation_backtracks = 0
        self.adaptation_backtrack_bound = False
        self.adaptation_backtrack_fresh = False
        # A running mean / variance filter on the policy's observations (optim.obs_filter).
        self.normalize_observations = False
        self.torch_num_threads = None
        # Sampling: whole episodes; actions are not squashed, only the copy sent to the
        # env is clipped, so the stored actions and log-probs are what the update sees.
        self.batch_mode = "complete_episodes"
        self.normalize_actions = False
        self.clip_actions = True
        self.num_env_runners = 0
        # Evaluation of θ on fixed training tasks (off unless evaluation_interval is set);
        # evaluation_duration counts episodes per task.
        self.evaluation_duration = 20
        self.evaluation_num_tasks = 4
        self.evaluation_seed = 0
        # Learned reward / cost critics for GAE (off: the per-batch linear baseline).
        self.critics = False
        self.critic_privileged = False
        self.critic_hidden = DEFAULT_CRITIC_HIDDEN
        self.critic_epochs = 10
        self.critic_lr = 1e-3

    # -- setters ------------------------------------------------------------------------
    def training(
        self,
        *,
        inner_steps: int = _UNSET,
        tasks_per_iteration: int = _UNSET,
        episodes_per_task: int = _UNSET,
        train_cost_limit: Optional[float] = _UNSET,
        cost_limit: Optional[float] = _UNSET,
        trust_region_delta: float = _UNSET,
        trust_region_schedule: Optional[list] = _UNSET,
        inner_delta: float = _UNSET,
        metric: str = _UNSET,
        backend: str = _UNSET,
        cg_iters: int = _UNSET,
        cg_damping: float = _UNSET,
        fisher_stride: int = _UNSET,
        line_search_steps: int = _UNSET,
        line_search_decay: float = _UNSET,
        lambda_: float = _UNSET,
        cost_gamma: float = _UNSET,
        cost_lambda: float = _UNSET,
        first_order: bool = _UNSET,
        cost_signal_share: bool = _UNSET,
        cost_signal_share_scope: str = _UNSET,
        cost_upper_bound: bool = _UNSET,
        recover_when_violating: bool = _UNSET,
        train_cost_window: int = _UNSET,
        train_limit_margin: float = _UNSET,
        inner_cost_free_scale: float = _UNSET,
        inner_recovery_scale: float = _UNSET,
        outer_recovery_scale: float = _UNSET,
        theta_cost_constraint: bool = _UNSET,
        curriculum_iterations: int = _UNSET,
        curriculum_ranges: Optional[dict] = _UNSET,
        adaptation_episodes_per_task: Optional[int] = _UNSET,
        adaptation_first_episodes_per_task: Optional[int] = _UNSET,
        adaptation_delta: Optional[float] = _UNSET,
        adaptation_cost_window: int = _UNSET,
        adaptation_cost_free_scale: float = _UNSET,
        adaptation_recovery_scale: float = _UNSET,
        adaptation_cost_margin_rate: float = _UNSET,
        adaptation_cost_room: float = _UNSET,
        adaptation_limit_margin: float = _UNSET,
        adaptation_backtracks: int = _UNSET,
        adaptation_backtrack_bound: bool = _UNSET,
        adaptation_backtrack_fresh: bool = _UNSET,
        normalize_observations: bool = _UNSET,
        seed: Optional[int] = _UNSET,
        meta: bool = _UNSET,
        constrained: bool = _UNSET,
        torch_num_threads: Optional[int] = _UNSET,
        critics: bool = _UNSET,
        critic_privileged: bool = _UNSET,
        critic_hidden: tuple = _UNSET,
        critic_epochs: int = _UNSET,
        critic_lr: float = _UNSET,
        **kwargs: Any,
    ) -> "MetaCPOConfig":
        """Set the Meta-CPO fields (plus AlgorithmConfig's, e.g. ``gamma``).

        ``inner_steps``: K inner CPO steps (sampling rounds K + 1); ``meta=False`` sets it
        to 0 unless given in the same call. ``train_cost_limit``: override of every training
        task's limit (None: the family's train limit); ``cost_limit`` is its deprecated
        name (a warning; both: ValueError). ``trust_region_delta`` / ``inner_delta``: outer and
        inner trust-region radii. ``trust_region_schedule``: the outer radius by
        meta-iteration instead of the constant ``trust_region_delta``, as [[iteration,
        delta], ...] with increasing iterations (0 = the first update), linear in between
        and constant beyond the ends (e.g. [[0, 0.01], [20, 0.01], [30, 0.002]] shrinks the
        last ten steps, so the last iterates move less); test-time CPO / TRPO steps without
        ``adaptation_delta`` take the radius the schedule has reached. ``seed``: seeds the
        task RNG (and RLlib's own seeding).
        ``torch_num_threads``: torch threads of the Learner's process (None, the default:
        torch's own, one per core); the Learner works while the EnvRunners wait, and its
        products over all tasks at once are large enough to use the cores.
        ``fisher_stride``: the Fisher metric (trust region) is estimated on every k-th
        sampled state (1: all states); neighbouring states of an episode carry nearly the
        same information, and the Fisher products are most of the Learner's time.
        ``critics``: GAE uses learned reward and cost critics (the RLModule's value heads,
        ``critic_hidden`` tanh MLPs fitted for ``critic_epochs`` epochs with Adam at
        ``critic_lr`` after every meta-update on all tasks' batches of the iteration)
        instead of a linear baseline fitted per batch; ``critic_privileged``: the critics
        also see each task's layout parameters and cost limit (never the policy).
        ``cost_signal_share``: scale each batch's cost gradient by its cross-fitted signal
        share, on the batches ``cost_signal_share_scope`` names: "violating" (c > 0; the
        default) or "all" (a satisfied batch's shrunk gradient loosens its constraint to
        bᵀx ≤ −c/ρ̂); ``cost_upper_bound``: c from the 95% upper bound of the batch's mean
        episode cost; ``recover_when_violating``: c > 0 always takes the pure cost-descent step
        (``metacpo_rllib.optim.cost_estimate``, ``cpo.classify``).
        ``train_cost_window`` ≥ 0 (episodes; 0: off): J_C of training's outer constraint
        (the query batches: θ's for CPO, the adapted policies' for Meta-CPO) pools each
        batch's episodes with the latest this many query episodes of earlier iterations,
        over tasks (each as its excess over its task's limit), in the Learner's
        checkpointed state: a rolling estimate of the cost across the task distribution
        instead of each task's own few episodes. ``train_limit_margin`` f in [0, 1): training's
        outer constraint is c = J_C + f·h − h, so it aims at (1 − f)·h (a setpoint below
        the limit, for θ whose cost swings between iterations); h itself stays the limit
        that metrics and evaluations report against.
        ``inner_cost_free_scale`` in (0, 1] / ``inner_recovery_scale`` ≥ 1: factors on
        the radius of a training inner step (meta algorithms) whose batch saw no cost / has
        c > 0, the rule of the adaptation steps below (``optim.meta.inner_radius``);
        ``outer_recovery_scale`` ≥ 1: the factor on the outer training step's radius when
        its c > 0 (a longer recovery of θ; test-time steps use
        ``adaptation_recovery_scale`` instead).
        ``theta_cost_constraint``: Meta-CPO's outer step keeps max(J_C(θ), J_C(φ(θ))) ≤ h,
        θ's own cost (its round-0 batches) beside its adapted policies' (off: only the
        adapted policies'; ``optim.meta.meta_update``).
        ``curriculum_iterations`` M ≥ 0 with ``curriculum_ranges`` (a family's ``ranges``
        override, e.g. ``{"train": {"num_hazards": [4, 6]}}``; ``{}``: the family's own):
        meta-iterations 1..M draw their training tasks with these ranges in place of
        env_config's, the later ones with env_config's; the task RNG runs on unchanged, so
        this is the run trained M iterations on the first ranges and continued from its
        checkpoint on the second. θ's evaluation and adaptation always use env_config's.
        Test-time adaptation (``MetaCPO.adapt``) only: ``adaptation_episodes_per_task`` is
        the episodes per task in each adaptation step's learning batch (None:
        ``episodes_per_task``; ``adapt(episodes_per_task=...)`` overrides it);
        ``adaptation_first_episodes_per_task`` the episodes per task in the first
        adaptation batch only (θ's, which step 1 learns from; None: as the others);
        ``adaptation_delta`` is the radius
        of every adaptation step, for all four algorithms alike (None: ``inner_delta`` for
        the meta algorithms, ``trust_region_delta`` for CPO / TRPO);
        ``adaptation_cost_window``: J_C of an adaptation step pools the batch's episodes
        with up to this many of the task's most recent episodes from its earlier steps (0:
        the batch alone). A batch that saw no cost then still has c > 0 after a violating
        one, and with no cost gradient the step is x = 0 instead of a plain reward step;
        ``adaptation_cost_free_scale`` in (0, 1]: the radius of an adaptation step whose
        batch saw no cost at all is multiplied by it (such a batch says nothing about how
        near the policy is to its cost, so its plain reward step is shortened);
        ``adaptation_recovery_scale`` ≥ 1: the radius of an adaptation step with c > 0 is
        multiplied by it (a longer recovery for a task that starts above its limit);
        ``adaptation_cost_margin_rate`` ≥ 0 (0: off): c = J_C + m − h, where each task's
        margin m (episode-cost units, from 0) moves after each of its adaptation steps by
        this rate times (realised − predicted cost change), never below 0
        (``optim.cost_estimate.learned_margin``; realised: the next batch's mean episode
        cost minus the one the step learned from).
        ``adaptation_cost_room`` k ≥ 0 (0: off): an adaptation step with c < 0 takes radius
        min(δ, (k·c)² / (2 bᵀH⁻¹b)), so that no direction of its trust region raises the
        first-order cost model by more than k times the room −c (``optim.meta.room_capped``;
        for all four algorithms alike, TRPO's steps have no cost gradient and no cap).
        ``adaptation_limit_margin`` f in [0, 1) (0: off): every adaptation step aims at
        (1 − f)·h, c = J_C + f·h (+ the learned margin) − h, so a task between (1 − f)·h
        and h takes a recovery step; the step check and every report still use h.
        ``adaptation_backtracks`` R ≥ 0 (0: off; constrained algorithms): each adaptation
        step is checked on the next learning batch, fresh episodes of the stepped policy,
        before they are used: where their mean episode cost is above both h and the mean
        of the batch the step learned from, the step is halved and its policy sampled
        again, up to R times, after which the task keeps its parameters from before the
        step (``optim.step_check``). Every rejected batch is sampling spent: it costs
        samples and its episodes may violate; the evaluation measures the policy kept.
        ``adaptation_backtrack_bound``: that check holds the one-sided 95% upper bound of
        the fresh batch's mean episode cost to h instead of the mean (a step is refused
        unless its batch shows it within h with confidence, or it lowered the cost).
        ``adaptation_backtrack_fresh``: the batch that decided a step is not learned from;
        once every step stands, each task samples a fresh learning batch (twice the
        samples per step), so the next step's J_C is not chosen for reading low.
        ``normalize_observations``: the policy normalises its observations with a running
        mean / variance filter (``optim.obs_filter``): its statistics are part of the
        RLModule's state (EnvRunners, checkpoints, exported policies), merged with every
        meta-iteration's observations after its update and frozen during adaptation.
        """
        train_cost_limit = _train_cost_limit(train_cost_limit, cost_limit)
        super().training(**kwargs)
        values = dict(
            critics=critics, critic_privileged=critic_privileged,
            critic_hidden=critic_hidden, critic_epochs=critic_epochs, critic_lr=critic_lr,
            tasks_per_iteration=tasks_per_iteration, episodes_per_task=episodes_per_task,
            train_cost_limit=train_cost_limit, trust_region_delta=trust_region_delta,
            trust_region_schedule=trust_region_schedule,
            inner_delta=inner_delta, metric=metric, backend=backend, cg_iters=cg_iters,
            cg_damping=cg_damping, fisher_stride=fisher_stride,
            line_search_steps=line_search_steps,
            line_search_decay=line_search_decay, lambda_=lambda_, cost_gamma=cost_gamma,
            cost_lambda=cost_lambda, first_order=first_order, seed=seed,
            cost_signal_share=cost_signal_share,
            cost_signal_share_scope=cost_signal_share_scope, cost_upper_bound=cost_upper_bound,
            recover_when_violating=recover_when_violating,
            train_cost_window=train_cost_window, train_limit_margin=train_limit_margin,
            inner_cost_free_scale=inner_cost_free_scale,
            inner_recovery_scale=inner_recovery_scale,
            outer_recovery_scale=outer_recovery_scale,
            theta_cost_constraint=theta_cost_constraint,
            curriculum_iterations=curriculum_iterations, curriculum_ranges=curriculum_ranges,
            adaptation_episodes_per_task=adaptation_episodes_per_task,
            adaptation_first_episodes_per_task=adaptation_first_episodes_per_task,
            adaptation_delta=adaptation_delta, adaptation_cost_window=adaptation_cost_window,
            adaptation_cost_free_scale=adaptation_cost_free_scale,
            adaptation_recovery_scale=adaptation_recovery_scale,
            adaptation_cost_margin_rate=adaptation_cost_margin_rate,
            adaptation_cost_room=adaptation_cost_room,
            adaptation_limit_margin=adaptation_limit_margin,
            adaptation_backtracks=adaptation_backtracks,
            adaptation_backtrack_bound=adaptation_backtrack_bound,
            adaptation_backtrack_fresh=adaptation_backtrack_fresh,
            normalize_observations=normalize_observations, constrained=constrained,
            torch_num_threads=torch_num_threads,
        )
        for name, value in values.items():
            if value is not _UNSET:
                setattr(self, name, value)
        if meta is not _UNSET:
            self.meta = meta
            if inner_steps is _UNSET and isinstance(meta, bool):
                self.inner_steps = (max(self.inner_steps, 1) if meta else 0)
        if inner_steps is not _UNSET:
            self.inner_steps = inner_steps
        return self

    @property
    def cost_limit(self) -> Optional[float]:
        """Deprecated name of ``train_cost_limit`` (kept for old code and checkpoints)."""
        return self.train_cost_limit

    @cost_limit.setter
    def cost_limit(self, value: Optional[float]) -> None:
        self.train_cost_limit = value

    def evaluation(self, *, evaluation_num_tasks: int = _UNSET, evaluation_seed: int = _UNSET,
                   **kwargs: Any) -> "MetaCPOConfig":
        """RLlib's evaluation settings, as this algorithm reads them: every
        ``evaluation_interval`` training iterations (None: never), θ is evaluated on
        ``evaluation_num_tasks`` fixed training tasks (drawn with ``evaluation_seed``, which
        also seeds the evaluation episodes: the same for every algorithm and training
        seed), ``evaluation_duration`` episodes per task (``evaluation_duration_unit``
        must stay "episodes"), on the training EnvRunners; see ``MetaCPO.evaluate``."""
        super().evaluation(**kwargs)
        if evaluation_num_tasks is not _UNSET:
            self.evaluation_num_tasks = evaluation_num_tasks
        if evaluation_seed is not _UNSET:
            self.evaluation_seed = evaluation_seed
        return self

    # -- derived ------------------------------------------------------------------------
    def outer_delta(self, iteration: int = 0) -> float:
        """The outer trust-region radius of meta-iteration ``iteration`` (0-based): the
        ``trust_region_schedule`` interpolated there, or ``trust_region_delta``."""
        if self.trust_region_schedule is None:
            return self.trust_region_delta
        steps, deltas = zip(*self.trust_region_schedule)
        return float(np.interp(iteration, steps, deltas))

    def update_config(self, iteration: int = 0):
        """The optim ``UpdateConfig`` of this config at meta-iteration ``iteration``
        (its outer radius: :meth:`outer_delta`; not validated)."""
        from metacpo_rllib.optim import UpdateConfig

        return UpdateConfig(
            inner_steps=self.inner_steps if self.meta else 0,
            constrained=self.constrained,
            delta=self.outer_delta(iteration),
            inner_delta=self.inner_delta,
            metric=self.metric,
            backend=self.backend,
            cg_iters=self.cg_iters,
            cg_damping=self.cg_damping,
            fisher_stride=self.fisher_stride,
            line_search_steps=self.line_search_steps,
            line_search_decay=self.line_search_decay,
            first_order=self.first_order,
            recover_when_violating=self.recover_when_violating,
            cost_signal_share=self.cost_signal_share,
            inner_cost_free_scale=self.inner_cost_free_scale,
            inner_recovery_scale=self.inner_recovery_scale,
            outer_recovery_scale=self.outer_recovery_scale,
            theta_cost_constraint=self.theta_cost_constraint,
        )

    def adaptation_update_config(self, cost_free: bool = False, violating: bool = False,
                                 iteration: int = 0):
        """The ``UpdateConfig`` of a test-time adaptation step after ``iteration`` training
        iterations: :meth:`update_config` at ``iteration`` with
        ``adaptation_delta``, if set, as the radius of both the inner and the plain step;
        both radii times ``adaptation_cost_free_scale`` if ``cost_free`` (the step's batch
        saw no cost), times ``adaptation_recovery_scale`` if ``violating`` (its c > 0); the
        inner step's own scales are 1 (its radius is scaled here already);
        ``adaptation_cost_room`` as its ``cost_room``."""
        cfg = dataclasses.replace(self.update_config(iteration), inner_cost_free_scale=1.0,
                                  inner_recovery_scale=1.0, outer_recovery_scale=1.0,
                                  cost_room=float(self.adaptation_cost_room))
        if self.adaptation_delta is not None:
            cfg = dataclasses.replace(cfg, delta=self.adaptation_delta,
                                      inner_delta=self.adaptation_delta)
        scale = ((self.adaptation_cost_free_scale if cost_free else 1.0)
                 * (self.adaptation_recovery_scale if violating else 1.0))
        if scale != 1.0:
            cfg = dataclasses.replace(cfg, delta=cfg.delta * scale,
                                      inner_delta=cfg.inner_delta * scale)
        return cfg

    def batch_kwargs(self) -> dict[str, float]:
        """Discounting / GAE keyword arguments of optim's ``make_batch``."""
        return {"gamma": self.gamma, "lam": self.lambda_,
                "cost_gamma": self.cost_gamma, "cost_lam": self.cost_lambda,
                "cost_upper_bound": self.cost_upper_bound}

    def make_family(self, *, curriculum: bool = False):
        """The task family named by ``env`` with ``env_config`` as its overrides; with
        ``curriculum``, with ``curriculum_ranges`` in place of env_config's ``ranges`` (the
        family the curriculum's first iterations draw their training tasks from)."""
        overrides = family_overrides(self.env_config)
        if curriculum:
            overrides["ranges"] = self.curriculum_ranges
        return make_family(self.env, **overrides)

    # -- validation -----------------------------------------------------------------------
    def validate(self) -> None:
        """Check the Meta-CPO fields first (ValueError naming the field), then RLlib's; then
        (re-)register the family names, so that EnvRunners built from this config find them
        even after an earlier ``ray.init`` / ``ray.shutdown`` emptied this process's registry."""
        self.validate_metacpo()
        super().validate()
        register_envs()

    def validate_metacpo(self) -> None:
        """Raise ValueError naming the first invalid Meta-CPO field."""
        for field in ("meta", "constrained", "first_order", "cost_signal_share",
                      "cost_upper_bound", "recover_when_violating", "theta_cost_constraint",
                      "normalize_observations", "adaptation_backtrack_bound",
                      "adaptation_backtrack_fresh"):
            if not isinstance(getattr(self, field), bool):
                _bad(field, "expected a bool", getattr(self, field))
        if not _is_int(self.inner_steps) or self.inner_steps < 0:
            _bad("inner_steps", "expected an integer >= 0", self.inner_steps)
        if self.meta and self.inner_steps < 1:
            _bad("inner_steps", "meta-learning (meta=True) needs >= 1 inner step",
                 self.inner_steps)
        if not self.meta and self.inner_steps != 0:
            _bad("inner_steps", "must be 0 when meta=False (CPO / TRPO)", self.inner_steps)
        for field in ("tasks_per_iteration", "episodes_per_task"):
            value = getattr(self, field)
            if not _is_int(value) or value < 1:
                _bad(field, "expected an integer >= 1", value)
        if self.train_cost_limit is not None:
            if not _is_num(self.train_cost_limit):  # a string would pass float() below
                _bad("train_cost_limit", "expected a finite number >= 0 or None",
                     self.train_cost_limit)
            check_cost_limit(self.train_cost_limit, "train_cost_limit")
        for field in ("trust_region_delta", "inner_delta"):
            value = getattr(self, field)
            if not _is_num(value) or value <= 0:
                _bad(field, "expected a finite number > 0", value)
        self.validate_schedule()
        for field in ("adaptation_episodes_per_task", "adaptation_first_episodes_per_task"):
            value = getattr(self, field)
            if value is not None and (not _is_int(value) or value < 1):
                _bad(field, "expected an integer >= 1 or None", value)
        if self.adaptation_delta is not None and (
                not _is_num(self.adaptation_delta) or self.adaptation_delta <= 0):
            _bad("adaptation_delta", "expected a finite number > 0 or None",
                 self.adaptation_delta)
        for field in ("adaptation_cost_window", "train_cost_window", "adaptation_backtracks"):
            if not _is_int(getattr(self, field)) or getattr(self, field) < 0:
                _bad(field, "expected an integer >= 0", getattr(self, field))
        for field in ("adaptation_backtrack_bound", "adaptation_backtrack_fresh"):
            if getattr(self, field) and not self.adaptation_backtracks:
                _bad(field, "needs adaptation_backtracks >= 1 (the check it changes)",
                     getattr(self, field))
        if self.cost_signal_share_scope not in ("violating", "all"):
            _bad("cost_signal_share_scope", "expected 'violating' or 'all'",
                 self.cost_signal_share_scope)
        for field in ("train_limit_margin", "adaptation_limit_margin"):
            if not _is_num(getattr(self, field)) or not 0 <= getattr(self, field) < 1:
                _bad(field, "expected a number in [0, 1)", getattr(self, field))
        if not _is_num(self.outer_recovery_scale) or self.outer_recovery_scale < 1:
            _bad("outer_recovery_scale", "expected a finite number >= 1",
                 self.outer_recovery_scale)
        for free, recovery in (("inner_cost_free_scale", "inner_recovery_scale"),
                               ("adaptation_cost_free_scale", "adaptation_recovery_scale")):
            if not _is_num(getattr(self, free)) or not 0 < getattr(self, free) <= 1:
                _bad(free, "expected a number in (0, 1]", getattr(self, free))
            if not _is_num(getattr(self, recovery)) or getattr(self, recovery) < 1:
                _bad(recovery, "expected a finite number >= 1", getattr(self, recovery))
        if not _is_num(self.adaptation_cost_margin_rate) or self.adaptation_cost_margin_rate < 0:
            _bad("adaptation_cost_margin_rate", "expected a finite number >= 0",
                 self.adaptation_cost_margin_rate)
        if not _is_num(self.adaptation_cost_room) or self.adaptation_cost_room < 0:
            _bad("adaptation_cost_room", "expected a finite number >= 0",
                 self.adaptation_cost_room)
        for field, low_open in (("gamma", True), ("lambda_", False),
                                ("cost_gamma", True), ("cost_lambda", False)):
            value = getattr(self, field)
            ok = _is_num(value) and (value > 0 if low_open else value >= 0) and value <= 1
            if not ok:
                _bad(field, f"expected a number in {'(' if low_open else '['}0, 1]", value)
        if self.torch_num_threads is not None and (
                not _is_int(self.torch_num_threads) or self.torch_num_threads < 1):
            _bad("torch_num_threads", "expected an integer >= 1 or None", self.torch_num_threads)
        self.validate_critics()
        if self.seed is not None and not _is_int(self.seed):
            _bad("seed", "expected an integer or None", self.seed)
        self.update_config().validate()  # metric, backend, cg_*, line_search_*
        if self.evaluation_interval is not None and (
                not _is_int(self.evaluation_interval) or self.evaluation_interval < 0):
            _bad("evaluation_interval", "expected an integer >= 1, or 0 / None (off)",
                 self.evaluation_interval)
        for field in ("evaluation_duration", "evaluation_num_tasks"):
            value = getattr(self, field)
            if not _is_int(value) or value < 1:
                _bad(field, "expected an integer >= 1", value)
        if not _is_int(self.evaluation_seed) or self.evaluation_seed < 0:
            _bad("evaluation_seed", "expected an integer >= 0", self.evaluation_seed)
        if self.evaluation_duration_unit != "episodes":
            _bad("evaluation_duration_unit", "Meta-CPO evaluates whole episodes ('episodes')",
                 self.evaluation_duration_unit)
        if not isinstance(self.env, str) or self.env not in FAMILIES:
            _bad("env", f"expected a task family, one of {list(FAMILIES)}", self.env)
        self.make_family()  # raises ValueError naming an invalid family override
        self.validate_curriculum()
        if self.num_learners > 1:
            _bad("num_learners", "the Meta-CPO update runs on one Learner (0 or 1)",
                 self.num_learners)
        if not (self.enable_rl_module_and_learner and self.enable_env_runner_and_connector_v2):
            _bad("api_stack", "Meta-CPO runs on RLlib's new API stack only", False)
        self.validate_sampling()

    def validate_curriculum(self) -> None:
        """Raise ValueError naming ``curriculum_iterations`` or ``curriculum_ranges``: both
        set (an integer >= 1 and ranges the family accepts) or both off (0, None)."""
        iterations, ranges = self.curriculum_iterations, self.curriculum_ranges
        if not _is_int(iterations) or iterations < 0:
            _bad("curriculum_iterations", "expected an integer >= 0", iterations)
        if ranges is None:
            if iterations:
                _bad("curriculum_iterations", "needs curriculum_ranges (the ranges of "
                     "those iterations' training tasks)", iterations)
            return
        if not iterations:
            _bad("curriculum_ranges", "needs curriculum_iterations >= 1 (the iterations "
                 "that draw from them)", ranges)
        try:
            self.make_family(curriculum=True)
        except ValueError as err:
            raise ValueError(f"curriculum_ranges: {err}") from None

    def validate_schedule(self) -> None:
        """Raise ValueError naming ``trust_region_schedule`` if it is not None or a
        non-empty list of [iteration, delta] pairs, iterations integers >= 0 increasing,
        deltas finite numbers > 0."""
        schedule = self.trust_region_schedule
        if schedule is None:
            return
        why = ("expected None or a non-empty list of [iteration, delta] pairs (iterations "
               "integers >= 0, increasing; deltas finite numbers > 0)")
        if not isinstance(schedule, (list, tuple)) or not schedule or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and _is_int(p[0]) and p[0] >= 0
                and _is_num(p[1]) and p[1] > 0 for p in schedule):
            _bad("trust_region_schedule", why, schedule)
        if any(b[0] <= a[0] for a, b in zip(schedule, schedule[1:])):
            _bad("trust_region_schedule", why, schedule)

    def validate_critics(self) -> None:
        """Raise ValueError naming the first invalid critic field."""
        for field in ("critics", "critic_privileged"):
            if not isinstance(getattr(self, field), bool):
                _bad(field, "expected a bool", getattr(self, field))
        if self.critic_privileged and not self.critics:
            _bad("critic_privileged", "privileged critic inputs need critics=True",
                 self.critic_privileged)
        hidden = self.critic_hidden
        if not isinstance(hidden, (list, tuple)) or not hidden or not all(
                _is_int(h) and h >= 1 for h in hidden):
            _bad("critic_hidden", "expected a non-empty list of integers >= 1", hidden)
        if not _is_int(self.critic_epochs) or self.critic_epochs < 1:
            _bad("critic_epochs", "expected an integer >= 1", self.critic_epochs)
        if not _is_num(self.critic_lr) or self.critic_lr <= 0:
            _bad("critic_lr", "expected a finite number > 0", self.critic_lr)

    def critic_model_config(self) -> dict[str, Any]:
        """The critics' RLModule ``model_config`` entries ({} with critics off). The
        privileged input's size comes from one task of the family (all its tasks have
        the same parameter keys)."""
        if not self.critics:
            return {}
        dim = 0
        if self.critic_privileged:
            task = self.make_family().sample_tasks(1, "train", seed=0)[0]
            dim = len(privileged_vector(task.params, task.cost_limit))
        return {"critics": True, "critic_hidden": [int(h) for h in self.critic_hidden],
                "critic_privileged_dim": dim}

    def validate_sampling(self) -> None:
        """Raise ValueError naming the first RLlib sampling setting that the Meta-CPO
        sampler (``rllib.episodes``: raw observations, whole episodes, stochastic actions,
        clipped only on their way to the env) would silently ignore."""
        for field in ("env_to_module_connector", "module_to_env_connector"):
            if getattr(self, "_" + field) is not None:
                _bad(field, "the Meta-CPO sampler runs no connector pipelines (the policy "
                     "sees the env's observations, the env the clipped actions)",
                     getattr(self, "_" + field))
        if self.observation_filter != "NoFilter":
            _bad("observation_filter", "the Meta-CPO sampler runs no RLlib filters (set "
                 "training(normalize_observations=True) for the policy's own running "
                 "mean / variance filter)", self.observation_filter)
        if self.normalize_actions is not False:
            _bad("normalize_actions", "the Meta-CPO sampler does not squash actions "
                 "(set False; clip_actions clips the env's copy)", self.normalize_actions)
        if self.explore is not True:
            _bad("explore", "learning samples the stochastic policy (set True; "
                 "adapt(deterministic=True) evaluates the mean action)", self.explore)
        if self.batch_mode != "complete_episodes":
            _bad("batch_mode", "the Meta-CPO sampler collects whole episodes "
                 "('complete_episodes')", self.batch_mode)
        for hook in _EPISODE_HOOKS:
            value = getattr(self, "callbacks_" + hook)
            if value is not None:
                _bad(f"callbacks.{hook}", "the Meta-CPO sampler runs no RLlib episodes, so "
                     "episode / sample callbacks are never called", value)
        classes = self.callbacks_class
        for cls in classes if isinstance(classes, (list, tuple)) else [classes]:
            hook = next((h for h in _EPISODE_HOOKS if _overrides(cls, h)), None)
            if hook is not None:
                name = getattr(cls, "__name__", repr(cls))
                _bad("callbacks_class", f"{name}.{hook} would never be called (the "
                     "Meta-CPO sampler runs no RLlib episodes)", cls)

    # -- RLlib defaults -------------------------------------------------------------------
    @property
    def _model_config_auto_includes(self) -> dict[str, Any]:
        """The RLModule settings that follow training fields (a user's ``model_config``
        still overrides them)."""
        return {**super()._model_config_auto_includes,
                "obs_filter": self.normalize_observations, **self.critic_model_config()}

    def get_default_rl_module_spec(self) -> RLModuleSpec:
        return RLModuleSpec(
            module_class=GaussianMLPModule,
            model_config={"policy_hidden": list(DEFAULT_HIDDEN),
                          "init_log_std": DEFAULT_INIT_LOG_STD},
        )

    def get_default_learner_class(self) -> type:
        from metacpo_rllib.rllib.learner import MetaCPOTorchLearner

        return MetaCPOTorchLearner


class MetaTRPOConfig(MetaCPOConfig):
    """Meta-TRPO: meta-learning with unconstrained (TRPO) inner and outer steps."""

    _algorithm = "MetaTRPO"


class CPOConfig(MetaCPOConfig):
    """CPO: no inner loop; the CPO update on the tasks' batches sampled by θ."""

    _algorithm = "CPO"


class TRPOConfig(MetaCPOConfig):
    """TRPO: no inner loop and no constraint in the update."""

    _algorithm = "TRPO"


def config_class(algorithm: str) -> type:
    """The config class of an algorithm's Tune or CLI name ("MetaCPO", "meta-cpo")."""
    return globals()[algorithm_info(algorithm).config_name]
