"""Runtime shims: PyPI safety-gymnasium 1.0.0 on Python 3.11, gymnasium 1.x and numpy 2.x.

safety-gymnasium 1.0.0 was written against gymnasium 0.28, numpy 1.x and Python <= 3.10.
Upstream tracks the breakage as safety-gymnasium issue #124 / PR #131; until a fixed release
is on PyPI, :func:`apply` patches the running interpreter. No installed file is edited.

What breaks, in the order an ``import safety_gymnasium`` / ``env.step`` meets it, and the fix:

(a) gymnasium 1.0 removed ``gymnasium.wrappers.{compatibility, autoreset, env_checker,
    normalize, time_limit}``. We register small stand-in modules in ``sys.modules`` that export
    the names safety_gymnasium imports, bound to their gymnasium 1.x equivalents
    (``Autoreset``, ``PassiveEnvChecker``, ``TimeLimit``, ``NormalizeObservation``,
    ``NormalizeReward``, ``wrappers.utils.RunningMeanStd``). ``EnvCompatibility`` (old gym API)
    has no equivalent; the stand-in raises when instantiated.
(b) Python 3.11 dataclasses reject unhashable field defaults; the geoms use the ndarrays of
    ``assets/color.py``'s ``COLOR`` as defaults. Right after that module executes we swap each
    colour for a read-only, hashable ndarray subclass (read-only because a dataclass default is
    shared by every instance, exactly as on Python <= 3.10).
(c) the package ``__init__`` imports the multi-agent module, which needs gymnasium-robotics.
    When gymnasium-robotics is absent that module is replaced by a stub whose ``make_ma`` raises
    an ImportError saying so; the single-agent tasks are unaffected.
(d) ``safety_gymnasium.make`` copies gymnasium 0.28's ``make`` (``EnvSpec.apply_api_compatibility``,
    ``autoreset``, ``EnvCompatibility``). It is replaced by a minimal single-agent ``make``:
    entry point + spec kwargs, wrapped in ``SafeTimeLimit``. (``metacpo_rllib.envs.safety``
    builds ``Builder`` objects directly and does not need it.)
(e) numpy >= 2.4 no longer converts a 1-element array to an index: ``BaseAgent._init_jnt_sensors``
    calls ``model.jnt(sensor.objid)`` with a shape-(1,) array, which fails for Car agents. While
    that method runs it sees the model through a proxy whose ``jnt`` takes such arrays.
(f) gymnasium 1.x ``OffScreenViewer`` needs ``width``/``height`` (rgb/depth_array render only);
    the name in ``bases.underlying`` is rebound to a factory filling them from the model's
    offscreen buffer size, which ``Underlying.render`` sets just before creating the viewer.
(g) MuJoCo 3's contact list (``data.contact``) has ``__len__`` and ``__getitem__`` but no
    ``__iter__``, so the ``for contact in data.contact[:ncon]`` loops of safety-gymnasium
    (button goals and costs, static-geom, pillar, vase and gremlin costs) iterate through the
    old sequence protocol and end in an out-of-range lookup whose IndexError costs ~180 us,
    ~30 % of a PointButton step. The list type gets an ``__iter__`` over its ``len``; the
    contacts seen are the same.

Fixes to safety_gymnasium modules are post-import hooks: a ``sys.meta_path`` finder wraps the
loaders of the affected modules (and serves the stub of (c)); modules already imported are
patched in place. ``apply()`` is idempotent and cheap, and importing this module does nothing
by itself. Call it before importing safety_gymnasium, in every process that builds an env
(``metacpo_rllib.envs.safety`` does so at import time).
"""
from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["apply", "is_applied", "HashableArray"]

_APPLIED = False
_MARK = "_metacpo_compat"  # attribute set on every patched callable / module (idempotency)

_MULTI_AGENT = "safety_gymnasium.tasks.safe_multi_agent.safe_mujoco_multi"


# -- (a) gymnasium 0.x wrapper modules --------------------------------------------------------
class _EnvCompatibilityUnavailable:
    """Stand-in for gymnasium 0.x ``EnvCompatibility`` (old gym step API); not on gymnasium 1.x."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "EnvCompatibility (old gym API conversion) does not exist in gymnasium>=1.0; "
            "use the shimmy package for old-API environments"
        )


def _legacy_wrapper_modules() -> dict[str, dict[str, Any]]:
    """Name -> exported attributes of each removed ``gymnasium.wrappers`` submodule."""
    import gymnasium.wrappers as w
    from gymnasium.wrappers.utils import RunningMeanStd

    return {
        "compatibility": {"EnvCompatibility": _EnvCompatibilityUnavailable},
        "autoreset": {"AutoResetWrapper": w.Autoreset},
        "env_checker": {"PassiveEnvChecker": w.PassiveEnvChecker},
        "normalize": {
            "NormalizeObservation": w.NormalizeObservation,
            "NormalizeReward": w.NormalizeReward,
            "RunningMeanStd": RunningMeanStd,
        },
        "time_limit": {"TimeLimit": w.TimeLimit},
    }


def _install_gymnasium_legacy_modules() -> None:
    import gymnasium.wrappers

    for short, names in _legacy_wrapper_modules().items():
        full = f"gymnasium.wrappers.{short}"
        if full in sys.modules:
            continue
        if importlib.util.find_spec(full) is not None:  # gymnasium < 1.0: the real one exists
            continue
        module = types.ModuleType(full, f"metacpo_rllib compat stand-in for gymnasium 0.x {full}")
        module.__dict__.update(names)
        setattr(module, _MARK, True)
        sys.modules[full] = module
        setattr(gymnasium.wrappers, short, module)


# -- (b) hashable colours -----------------------------------------------------------------------
class HashableArray(np.ndarray):
    """An ndarray hashable by identity, so dataclasses (Python 3.11+) accept it as a default."""

    def __hash__(self) -> int:  # identity hash: equal-valued arrays are still distinct keys
        return id(self)


def _hashable(value: Any) -> Any:
    if isinstance(value, np.ndarray) and type(value).__hash__ is None:
        value = np.array(value).view(HashableArray)
        value.flags.writeable = False
    return value


def _fix_colors(module: types.ModuleType) -> None:
    colors = getattr(module, "COLOR", None)
    if isinstance(colors, dict):
        for key, value in colors.items():
            colors[key] = _hashable(value)


# -- (c) multi-agent stub ----------------------------------------------------------------------
def _fill_multi_agent_stub(module: types.ModuleType) -> None:
    def make_ma(*args: Any, **kwargs: Any) -> Any:
        raise ImportError(
            "safety_gymnasium multi-agent environments need gymnasium-robotics, which is not "
            "installed (stubbed by metacpo_rllib.envs.compat)"
        )

    module.make_ma = make_ma
    setattr(module, _MARK, True)


# -- (d) single-agent make ------------------------------------------------------------------------
def _safe_make(
    id: Any,  # noqa: A002 - same signature as the function it replaces
    max_episode_steps: int | None = None,
    autoreset: bool | None = None,
    apply_api_compatibility: bool | None = None,
    disable_env_checker: bool | None = None,
    **kwargs: Any,
) -> Any:
    """Make a registered single-agent safety-gymnasium env (6-tuple ``step``), time-limited.

    ``autoreset`` and ``apply_api_compatibility`` are not supported on gymnasium 1.x;
    ``disable_env_checker`` is accepted and ignored (no passive checker is added).
    """
    import copy

    import gymnasium
    from gymnasium.envs.registration import EnvSpec, load_env_creator

    from safety_gymnasium.wrappers import SafeTimeLimit

    if autoreset or apply_api_compatibility:
        raise ValueError("safety_gymnasium.make (compat): autoreset / apply_api_compatibility "
                         "are not supported with gymnasium>=1.0")
    spec = copy.deepcopy(id if isinstance(id, EnvSpec) else gymnasium.spec(id))
    creator = spec.entry_point if callable(spec.entry_point) else load_env_creator(spec.entry_point)
    env = creator(**{**spec.kwargs, **kwargs})
    steps = spec.max_episode_steps if max_episode_steps is None else max_episode_steps
    spec.max_episode_steps = steps
    spec.kwargs = {**spec.kwargs, **kwargs}
    env.unwrapped.spec = spec
    return SafeTimeLimit(env, steps) if steps is not None else env


def _patch_make(module: types.ModuleType) -> None:
    if getattr(getattr(module, "make", None), _MARK, False):
        return
    setattr(_safe_make, _MARK, True)
    module.make = _safe_make


def _patch_package(module: types.ModuleType) -> None:
    """The package bound ``make`` at import time; rebind it to the patched one."""
    if hasattr(module, "make"):
        _patch_make(module)


# -- (e) numpy >= 2.4 joint index -----------------------------------------------------------------
class _JntIndexModel:
    """Proxy of an ``MjModel`` whose ``jnt`` also takes 1-element integer arrays."""

    def __init__(self, model: Any) -> None:
        self._model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def jnt(self, key: Any) -> Any:
        if isinstance(key, np.ndarray) and key.size == 1:
            key = int(key.reshape(-1)[0])
        return self._model.jnt(key)


def _patch_base_agent(module: types.ModuleType) -> None:
    agent_cls = getattr(module, "BaseAgent", None)
    original = getattr(agent_cls, "_init_jnt_sensors", None)
    if original is None or getattr(original, _MARK, False):
        return

    def _init_jnt_sensors(self: Any) -> None:
        engine = self.engine
        self.engine = types.SimpleNamespace(model=_JntIndexModel(engine.model), data=engine.data)
        try:
            original(self)
        finally:
            self.engine = engine

    setattr(_init_jnt_sensors, _MARK, True)
    _init_jnt_sensors.__doc__ = original.__doc__
    agent_cls._init_jnt_sensors = _init_jnt_sensors


# -- (f) offscreen viewer size --------------------------------------------------------------------
def _patch_underlying(module: types.ModuleType) -> None:
    viewer_cls = getattr(module, "OffScreenViewer", None)
    if viewer_cls is None or getattr(viewer_cls, _MARK, False):
        return

    def offscreen_viewer(model: Any, data: Any, width: int | None = None,
                         height: int | None = None, **kwargs: Any) -> Any:
        """gymnasium's OffScreenViewer, sized by the model's offscreen buffer by default."""
        from gymnasium.envs.mujoco import mujoco_rendering

        width = int(model.vis.global_.offwidth) if width is None else width
        height = int(model.vis.global_.offheight) if height is None else height
        return mujoco_rendering.OffScreenViewer(model, data, width, height, **kwargs)

    setattr(offscreen_viewer, _MARK, True)
    module.OffScreenViewer = offscreen_viewer


# -- (g) iterable contact lists -----------------------------------------------------------------
def _contact_list_iter(self: Any) -> Any:
    """Iterate a MuJoCo contact list by index, up to its length."""
    return (self[i] for i in range(len(self)))


def _patch_contact_iteration() -> None:
    import mujoco

    contact_list = type(mujoco.MjData(mujoco.MjModel.from_xml_string("<mujoco/>")).contact)
    if "__iter__" not in vars(contact_list):
        setattr(_contact_list_iter, _MARK, True)
        contact_list.__iter__ = _contact_list_iter


# -- post-import hook machinery -------------------------------------------------------------------
_FIXUPS: dict[str, Callable[[types.ModuleType], None]] = {
    "safety_gymnasium": _patch_package,
    "safety_gymnasium.assets.color": _fix_colors,
    "safety_gymnasium.utils.registration": _patch_make,
    "safety_gymnasium.bases.base_agent": _patch_base_agent,
    "safety_gymnasium.bases.underlying": _patch_underlying,
}


class _FixupLoader(importlib.abc.Loader):
    """Delegates to the real loader, then runs the fixup on the fresh module."""

    def __init__(self, loader: Any, fixup: Callable[[types.ModuleType], None]) -> None:
        self._loader = loader
        self._fixup = fixup

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        self._loader.exec_module(module)
        self._fixup(module)

    def __getattr__(self, name: str) -> Any:  # get_code, get_source, is_package, ...
        return getattr(self._loader, name)


class _StubLoader(importlib.abc.Loader):
    """Loads the multi-agent module as a stub (gymnasium-robotics missing)."""

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        _fill_multi_agent_stub(module)


class _SafetyGymnasiumFinder(importlib.abc.MetaPathFinder):
    """Finds the affected safety_gymnasium modules and wraps their loaders."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: types.ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == _MULTI_AGENT and not _has_gymnasium_robotics():
            return importlib.util.spec_from_loader(fullname, _StubLoader())
        fixup = _FIXUPS.get(fullname)
        if fixup is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _FixupLoader(spec.loader, fixup)
        return spec


def _has_gymnasium_robotics() -> bool:
    return importlib.util.find_spec("gymnasium_robotics") is not None


def _install_finder() -> None:
    if not any(isinstance(f, _SafetyGymnasiumFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _SafetyGymnasiumFinder())


def _patch_loaded_modules() -> None:
    """Fix modules imported before ``apply`` (fixups are idempotent)."""
    for name, fixup in _FIXUPS.items():
        module = sys.modules.get(name)
        if module is not None:
            fixup(module)


def apply() -> None:
    """Install every shim; safe to call any number of times, in any process."""
    global _APPLIED
    _install_gymnasium_legacy_modules()
    _patch_contact_iteration()
    _install_finder()
    _patch_loaded_modules()
    _APPLIED = True


def is_applied() -> bool:
    """Whether :func:`apply` ran in this process."""
    return _APPLIED
