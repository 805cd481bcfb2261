"""Meta-CPO as a Ray RLlib service; the RLlib names below are imported lazily (``optim``
and ``envs`` do not import Ray)."""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_RLLIB_EXPORTS = (
    "MetaCPOConfig", "MetaTRPOConfig", "CPOConfig", "TRPOConfig",
    "MetaCPO", "MetaTRPO", "CPO", "TRPO",
)


def __getattr__(name: str) -> Any:
    if name in _RLLIB_EXPORTS:
        return getattr(importlib.import_module("metacpo_rllib.rllib"), name)
    raise AttributeError(f"module 'metacpo_rllib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_RLLIB_EXPORTS))


__all__ = list(_RLLIB_EXPORTS)
