"""Meta-CPO as a Ray RLlib service; the RLlib names below are imported lazily (``optim``
and ``envs`` do not import Ray). Importing the package is enough for Tune to know
"MetaCPO", "MetaTRPO", "CPO" and "TRPO" (registered when Tune first asks for them)."""
from __future__ import annotations

import importlib
from typing import Any

from metacpo_rllib import _tune_hook

__version__ = "0.1.0"

_tune_hook.install()

_RLLIB_EXPORTS = (
    "MetaCPOConfig", "MetaTRPOConfig", "CPOConfig", "TRPOConfig",
    "MetaCPO", "MetaTRPO", "CPO", "TRPO",
)


#: Ray-free names (torch only), also imported on first use.
_POLICY_EXPORTS = ("load_policy", "Policy", "policy_from_weights")


def __getattr__(name: str) -> Any:
    if name in _RLLIB_EXPORTS:
        return getattr(importlib.import_module("metacpo_rllib.rllib"), name)
    if name in _POLICY_EXPORTS:
        return getattr(importlib.import_module("metacpo_rllib.policy"), name)
    raise AttributeError(f"module 'metacpo_rllib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_RLLIB_EXPORTS) + list(_POLICY_EXPORTS))


__all__ = list(_RLLIB_EXPORTS) + list(_POLICY_EXPORTS)
