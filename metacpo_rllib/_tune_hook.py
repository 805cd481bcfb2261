"""Make ``import metacpo_rllib`` enough for Tune to know "MetaCPO", "MetaTRPO", "CPO"
and "TRPO", without importing Ray at that point.

Tune resolves a trainable name with ``ray.tune.registry.validate_trainable``, which, for a
name it does not know, calls the module's ``_has_rllib_trainable`` (RLlib's own lazy
registration). This module wraps that function, when ``ray.tune.registry`` is (or gets)
imported, so that an unknown name of ours first imports ``metacpo_rllib.rllib``, which
registers the four algorithms and the task-family envs. Nothing is imported before Tune
asks for one of these names. Ray is pinned (2.60); if a Ray version lacks the function,
the hook stays off and ``import metacpo_rllib.rllib`` registers the names as before.
"""
from __future__ import annotations

import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

from metacpo_rllib.algorithms import TUNE_NAMES  # the names this package registers

if TYPE_CHECKING:
    from importlib.machinery import ModuleSpec

_TARGET = "ray.tune.registry"


def _patch(registry: ModuleType) -> None:
    """Wrap ``registry._has_rllib_trainable`` (once)."""
    original = getattr(registry, "_has_rllib_trainable", None)
    if original is None or getattr(original, "_metacpo_hook", False):
        return

    def _has_rllib_trainable(trainable_name: str) -> bool:
        if trainable_name in TUNE_NAMES:
            import metacpo_rllib.rllib  # noqa: F401  (registers the algorithms and envs)

            if registry._has_trainable(trainable_name):
                return True
        return original(trainable_name)

    _has_rllib_trainable._metacpo_hook = True  # type: ignore[attr-defined]
    registry._has_rllib_trainable = _has_rllib_trainable


class _Loader:
    """Runs the real loader, then ``after(module)``."""

    def __init__(self, loader: Any, after: Callable[[ModuleType], None]) -> None:
        self._loader, self._after = loader, after

    def create_module(self, spec: ModuleSpec) -> Optional[ModuleType]:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        self._after(module)

    def __getattr__(self, name: str) -> Any:  # get_source, get_code, ... for tools
        return getattr(self._loader, name)


class _Finder:
    """Finds ``ray.tune.registry`` through the other finders and wraps its loader."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]],
                  target: Optional[ModuleType] = None
                  ) -> Optional[ModuleSpec]:
        if fullname != _TARGET:
            return None
        _remove_finder()
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _Loader(spec.loader, _patch)
                return spec
        return None


def _remove_finder() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _Finder)]


def install() -> None:
    """Patch ``ray.tune.registry`` now if it is imported, else when it is."""
    registry = sys.modules.get(_TARGET)
    if registry is not None:
        _patch(registry)
        return
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
