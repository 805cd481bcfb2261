"""The compiled part of :class:`~metacpo_rllib.envs.fast_step.FastStep`: one step's arithmetic.

Two numba functions do what is left of a safety-gymnasium step once the physics has run:
:func:`step_outputs` (the reward, the costs, the goal contact, the sensor copy, the hinge
sin/cos and the lidar's ego vectors and distances) and :func:`lidar_bins` (the pseudo-lidar
bins with alias, the zeroed button lidar and the observation's bounds check). Between the two
the caller computes the lidar angles with numpy's ``arctan2`` -- and ``exp`` where the lidar
has no ``max_dist`` --, the transcendentals whose numpy versions (SIMD implementations)
differ from the C library's (which numba calls) in the last bit in 1-10 % of values;
``sin``/``cos`` of the C library equal numpy's. So every output stays bitwise equal to the
stock step:

* the ego vector ``world @ agent_mat`` is rounded as OpenBLAS's ``dgemv`` rounds numpy's
  ``(3,) @ (3, 3)`` on this machine: a fused multiply-add chain (AVX-512 kernels) or plain
  products and sums (AVX2 kernels); :func:`~metacpo_rllib.envs.fast_step.ego_rounding`
  finds which by asking numpy once per process;
* ``abs(complex)`` is numpy's SIMD formula ``sqrt(fma(r, r, 1)) * larger``
  (``r = smaller / larger``), not the C library's ``hypot``;
* numpy's ``x**2`` of a float64 scalar is the C library's ``pow``, not ``x * x``;
* sums, products and comparisons run in the stock order.

The first two mirror the BLAS and SIMD kernels numpy picks on x86-64 with FMA (AVX2 or
AVX-512); on a machine whose numpy rounds the ego vector in neither way the env takes the
stock step (with a warning), and
``tests/test_fast_step.py`` compares every output bit for bit, so any other difference fails
it rather than drifting silently.

Why numba: it ships as pip wheels (numba and llvmlite) for every platform the project runs on,
needs no C compiler on a fresh machine, and ``cache=True`` writes the machine code next to this
module (or to ``NUMBA_CACHE_DIR``) so each checkout compiles once (a few seconds); later
processes -- every Ray EnvRunner -- load it instead, in about a second (most of it numba's own
start-up). The kernels have explicit signatures, so each compiles exactly once, when this
module is imported: :mod:`~metacpo_rllib.envs.fast_step` imports it with the first
``FastStep``, so ``fast_step=False`` never pays for it.

Scalars travel in two small arrays (``ipar``: int64, ``fpar``: float64) and the index tables in
one int64 array (``tab``, offsets in ``ipar``): a numba call costs ~50 ns per array argument
but ~300 ns per Python scalar.
"""
from __future__ import annotations

import math

import llvmlite.ir as llvm_ir
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["new_fpar", "set_ctrl", "step_outputs", "lidar_bins", "pack_tables", "ego_column"]

# -- slots of ipar (int64) -------------------------------------------------------------------
I_AGENT, I_ROWS, I_NBINS, I_ALIAS, I_CIRCLE, I_GOAL_ID, I_GOAL_BUTTON = 0, 1, 2, 3, 4, 5, 6
I_BUTTONS_COST = 7    # 1: the buttons constraint is active this step (timer was 0)
I_BUTTONS_ZERO = 8    # 1: the buttons lidar reads zeros this step (timer is not 0)
I_BUTTONS_LIDAR = 9   # offset of the buttons lidar in the observation, -1: none
I_SIGWALLS = 10       # number of sigwalls
I_EXP_LIDAR = 11      # 1: the lidar reads exp(-gain * dist) (no max_dist)
I_WITH_COSTS = 12     # 0: observation only
I_EGO_ROUNDING = 13   # how numpy's (3,) @ (3, 3) rounds here: EGO_FMA_CHAIN or EGO_PLAIN
# (start, stop) of each index table in tab
TABLES = ("src", "dst", "hinge_adr", "hinge_off", "lidar_body", "lidar_base", "hazard_id",
          "geom_agent", "geom_is_button", "geom_button", "cost_kinds")
T_SRC, T_DST, T_HINGE_ADR, T_HINGE_OFF, T_LIDAR_BODY, T_LIDAR_BASE, T_HAZARD_ID = (
    14, 16, 18, 20, 22, 24, 26)
T_GEOM_AGENT, T_GEOM_IS_BUTTON, T_GEOM_BUTTON, T_COST_KINDS = 28, 30, 32, 34
IPAR_SIZE = 36
# -- slots of fpar (float64) -----------------------------------------------------------------
F_BIN_SIZE, F_MAX_DIST, F_CIRCLE_RADIUS, F_REWARD_FACTOR, F_LOCATE_FACTOR = 0, 1, 2, 3, 4
F_HAZARD_SIZE, F_HAZARD_COST, F_BUTTON_COST, F_REWARD_DISTANCE, F_REWARD_GOAL = 5, 6, 7, 8, 9
F_LAST_DIST_GOAL = 10
F_TWO = 11  # 2.0, read at run time: LLVM turns pow(x, <constant 2>) into x * x
FPAR_SIZE = 12
# -- slots of out (float64) ------------------------------------------------------------------
O_REWARD, O_GOAL_MET, O_DIST_GOAL, O_SIGWALLS, O_HAZARDS, O_BUTTONS, O_COST_SUM = range(7)
OUT_SIZE = 7
# cost kinds (table "cost_kinds"), in the obstacles' order
COST_SIGWALLS, COST_HAZARDS, COST_BUTTONS = 1, 2, 3
# the roundings of numpy's ``w @ m`` ((3,) @ (3, 3), OpenBLAS's dgemv) seen on x86-64:
# column j is fma(w2, m2j, fma(w1, m1j, w0 * m0j)) (AVX-512 kernels) or, without fused
# multiply-adds, (w0 * m0j + w1 * m1j) + w2 * m2j (AVX2 kernels)
EGO_FMA_CHAIN, EGO_PLAIN = 0, 1
EGO_ROUNDINGS = (EGO_FMA_CHAIN, EGO_PLAIN)

_TWO_PI = np.pi * 2

# the exported kernels' signatures: one compiled version each (C-contiguous data; the
# contact geoms are a strided view, "A", which also takes the contiguous one of 0-1 contacts)
_F1, _F2, _I1 = types.float64[::1], types.float64[:, ::1], types.int64[::1]
_SET_CTRL = types.void(types.float64[:], _F2, _F1)
_STEP_OUTPUTS = types.void(_F1, _F2, _F2, types.int32[:, :], _F1, _F1, _F2, _I1, _I1, _F1, _F1)
_LIDAR_BINS = types.int64(_F1, _F1, _F1, _F2, _F1, _F1, _I1, _I1, _F1)
_EGO_COLUMN = types.float64(types.float64, types.float64, types.float64, _F1, types.int64,
                            types.int64)


@intrinsic
def _fma(typingctx, a, b, c):  # pylint: disable=unused-argument
    """A fused multiply-add ``a * b + c`` (one rounding), as OpenBLAS and numpy's SIMD use."""
    sig = types.float64(types.float64, types.float64, types.float64)

    def codegen(context, builder, signature, args):  # pylint: disable=unused-argument
        double = llvm_ir.DoubleType()
        fn = cgutils.get_or_insert_function(
            builder.module, llvm_ir.FunctionType(double, [double] * 3), "llvm.fma.f64")
        return builder.call(fn, args)

    return sig, codegen


def new_fpar() -> np.ndarray:
    """A zeroed ``fpar`` with its constants set."""
    fpar = np.zeros(FPAR_SIZE)
    fpar[F_TWO] = 2.0
    return fpar


def pack_tables(tables: dict[str, np.ndarray], ipar: np.ndarray) -> np.ndarray:
    """Concatenate the index tables into one int64 array; their (start, stop) go to ipar."""
    parts, start = [], 0
    for slot, name in zip(range(T_SRC, IPAR_SIZE, 2), TABLES):
        values = np.asarray(tables.get(name, ()), dtype=np.int64).ravel()
        ipar[slot], ipar[slot + 1] = start, start + len(values)
        parts.append(values)
        start += len(values)
    return np.concatenate(parts)


@njit(_EGO_COLUMN, cache=True)
def ego_column(w0, w1, w2, m, j, rounding):
    """Column ``j`` of ``(w0, w1, w2) @ m.reshape(3, 3)`` (``m``: the 9 row-major entries),
    rounded as ``rounding`` (:data:`EGO_FMA_CHAIN` or :data:`EGO_PLAIN`)."""
    if rounding == EGO_PLAIN:
        return w0 * m[j] + w1 * m[3 + j] + w2 * m[6 + j]
    return _fma(w2, m[6 + j], _fma(w1, m[3 + j], w0 * m[j]))


@njit(cache=True)
def _cabs(x, y):
    """numpy's ``abs`` of ``complex(x, y)`` (its SIMD loop), bit for bit (finite inputs)."""
    re, im = abs(x), abs(y)
    larger, smaller = max(re, im), min(re, im)
    if larger == 0.0:
        return 0.0
    ratio = smaller / larger
    return math.sqrt(_fma(ratio, ratio, 1.0)) * larger


@njit(cache=True)
def _goal_and_wrong_contacts(geoms, tab, ipar):
    """(agent touches the goal button, contacts agent - other button), as the stock loops."""
    is_agent = tab[ipar[T_GEOM_AGENT]:ipar[T_GEOM_AGENT + 1]]
    is_button = tab[ipar[T_GEOM_IS_BUTTON]:ipar[T_GEOM_IS_BUTTON + 1]]
    button = tab[ipar[T_GEOM_BUTTON]:ipar[T_GEOM_BUTTON + 1]]
    goal = ipar[I_GOAL_BUTTON]
    met, wrong = False, 0
    for k in range(geoms.shape[0]):
        g1, g2 = geoms[k, 0], geoms[k, 1]
        agent = is_agent[g1] != 0 or is_agent[g2] != 0
        touches_goal = button[g1] == goal or button[g2] == goal
        if agent and touches_goal:
            met = True
        if agent and not touches_goal and (is_button[g1] != 0 or is_button[g2] != 0):
            wrong += 1
    return met, wrong


@njit(cache=True)
def _reward_and_costs(xpos, vel, geoms, tab, ipar, fpar, out):
    """``calculate_reward`` and ``Builder._cost`` (indicators) of a circle or button task."""
    agent = ipar[I_AGENT]
    ax, ay = xpos[agent, 0], xpos[agent, 1]
    met, wrong = False, 0
    if geoms.shape[0] and ipar[T_GEOM_AGENT] != ipar[T_GEOM_AGENT + 1]:
        met, wrong = _goal_and_wrong_contacts(geoms, tab, ipar)
    if ipar[I_CIRCLE]:  # CircleLevel0: tangential speed, damped off the circle
        u, v = vel[0], vel[1]
        # numpy's ``x**2`` of a float64 scalar is the C library's pow(x, 2.0), which is
        # not always x * x in the last bit
        two = fpar[F_TWO]
        radius = math.sqrt(math.pow(ax, two) + math.pow(ay, two))
        reward = 0.0 + (((-u * ay + v * ax) / radius)
                        / (1 + abs(radius - fpar[F_CIRCLE_RADIUS]))) * fpar[F_REWARD_FACTOR]
    else:  # ButtonLevel0: progress towards the goal, a bonus on reaching it
        dx, dy = xpos[ipar[I_GOAL_ID], 0] - ax, xpos[ipar[I_GOAL_ID], 1] - ay
        dist = math.sqrt(dx * dx + dy * dy)
        reward = 0.0 + (fpar[F_LAST_DIST_GOAL] - dist) * fpar[F_REWARD_DISTANCE]
        out[O_DIST_GOAL] = dist
        if met:
            reward += fpar[F_REWARD_GOAL]
    out[O_REWARD], out[O_GOAL_MET] = reward, 1.0 if met else 0.0
    total = 0.0
    kinds = tab[ipar[T_COST_KINDS]:ipar[T_COST_KINDS + 1]]
    for kind in kinds:
        if kind == COST_SIGWALLS:  # sigwalls: out of the boundary
            out_x = abs(ax) > fpar[F_LOCATE_FACTOR]
            if ipar[I_SIGWALLS] == 4:
                out_x = out_x or abs(ay) > fpar[F_LOCATE_FACTOR]
            value = 1.0 if out_x else 0.0
            out[O_SIGWALLS] = value
        elif kind == COST_HAZARDS:  # hazards: cost * depth inside each hazard, summed in order
            value = 0.0
            size = fpar[F_HAZARD_SIZE]
            for h in tab[ipar[T_HAZARD_ID]:ipar[T_HAZARD_ID + 1]]:
                dx, dy = xpos[h, 0] - ax, xpos[h, 1] - ay
                dist = math.sqrt(dx * dx + dy * dy)
                if dist <= size:
                    value += fpar[F_HAZARD_COST] * (size - dist)
            out[O_HAZARDS] = 1.0 if value > 0.0 else 0.0
        else:  # buttons: one cost per contact with a button that is not the goal
            if not ipar[I_BUTTONS_COST]:
                continue
            value = 0.0
            for _ in range(wrong):
                value += fpar[F_BUTTON_COST]
            out[O_BUTTONS] = 1.0 if value > 0.0 else 0.0
        total += value
    out[O_COST_SUM] = 1.0 if total > 0.0 else 0.0


@njit(_STEP_OUTPUTS, cache=True)
def step_outputs(sensordata, xpos, xmat, geoms, vel, obs, work, tab, ipar, fpar, out):
    """Reward and costs into ``out`` (if ``ipar[I_WITH_COSTS]``), the sensor part of ``obs``,
    and per lidar row the ego x, y and distance into ``work[0:3]``."""
    if ipar[I_WITH_COSTS]:
        _reward_and_costs(xpos, vel, geoms, tab, ipar, fpar, out)
    src, dst = tab[ipar[T_SRC]:ipar[T_SRC + 1]], tab[ipar[T_DST]:ipar[T_DST + 1]]
    for k in range(src.shape[0]):
        obs[dst[k]] = sensordata[src[k]]
    hinge_adr = tab[ipar[T_HINGE_ADR]:ipar[T_HINGE_ADR + 1]]
    hinge_off = tab[ipar[T_HINGE_OFF]:ipar[T_HINGE_OFF + 1]]
    for k in range(hinge_adr.shape[0]):
        theta = sensordata[hinge_adr[k]]
        obs[hinge_off[k]], obs[hinge_off[k] + 1] = math.sin(theta), math.cos(theta)
    agent = ipar[I_AGENT]
    ax, ay, az = xpos[agent, 0], xpos[agent, 1], xpos[agent, 2]
    m, rounding = xmat[agent], ipar[I_EGO_ROUNDING]
    bodies = tab[ipar[T_LIDAR_BODY]:ipar[T_LIDAR_BODY + 1]]
    for r in range(bodies.shape[0]):
        body = bodies[r]
        px, py = (0.0, 0.0) if body < 0 else (xpos[body, 0], xpos[body, 1])
        w0, w1, w2 = px - ax, py - ay, 0.0 - az
        ex, ey = ego_column(w0, w1, w2, m, 0, rounding), ego_column(w0, w1, w2, m, 1, rounding)
        work[0, r], work[1, r], work[2, r] = ex, ey, _cabs(ex, ey)


@njit(_LIDAR_BINS, cache=True)
def lidar_bins(obs, low, high, work, angle, sensor, tab, ipar, fpar):
    """The pseudo-lidar of every row into ``obs`` (``angle``: ``arctan2`` of the ego vector;
    ``sensor``: the exp reading where ``ipar[I_EXP_LIDAR]``), then the bounds check.

    Returns 0; 1 for an alias outside [0, 1] (the stock assertion), 2 for an observation
    outside its box (or NaN)."""
    nbins, bin_size, max_dist = ipar[I_NBINS], fpar[F_BIN_SIZE], fpar[F_MAX_DIST]
    bases = tab[ipar[T_LIDAR_BASE]:ipar[T_LIDAR_BASE + 1]]
    for k in range(bases.shape[0]):  # the lidar groups end the observation: zero them first
        for b in range(nbins):
            obs[bases[k] + b] = 0.0
    for r in range(bases.shape[0]):
        base = bases[r]
        ang = angle[r] % _TWO_PI
        index = int(ang / bin_size)
        if ipar[I_EXP_LIDAR]:
            reading = sensor[r]
        else:
            left = max_dist - work[2, r]
            reading = (left if left > 0 else 0.0) / max_dist
        if reading > obs[base + index]:
            obs[base + index] = reading
        if ipar[I_ALIAS]:
            alias = (ang - bin_size * index) / bin_size
            if not 0 <= alias <= 1:
                return 1
            plus, minus = base + (index + 1) % nbins, base + (index - 1) % nbins
            if alias * reading > obs[plus]:
                obs[plus] = alias * reading
            if (1 - alias) * reading > obs[minus]:
                obs[minus] = (1 - alias) * reading
    if ipar[I_BUTTONS_ZERO] and ipar[I_BUTTONS_LIDAR] >= 0:
        for b in range(nbins):
            obs[ipar[I_BUTTONS_LIDAR] + b] = 0.0
    for i in range(obs.shape[0]):
        if not (obs[i] >= low[i] and obs[i] <= high[i]):
            return 2
    return 0


@njit(_SET_CTRL, cache=True)
def set_ctrl(action, ctrl_range, ctrl):
    """``data.ctrl[:] = np.clip(action, low, high)`` (NaN stays NaN, as in numpy)."""
    for i in range(ctrl.shape[0]):
        value = action[i]
        if value < ctrl_range[i, 0]:
            value = ctrl_range[i, 0]
        if value > ctrl_range[i, 1]:
            value = ctrl_range[i, 1]
        ctrl[i] = value
