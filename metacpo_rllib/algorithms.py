"""The four algorithms, once: how the CLI, Tune / RLlib, the configs, reports and figures name
them. Ray-free (the CLI checks its flags and ``import metacpo_rllib`` runs without Ray); the
RLlib classes are looked up by name on first use."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AlgorithmInfo:
    """One algorithm: its names, its two switches and its figure style."""

    name: str          # Tune / RLlib registry name and Algorithm class (rllib.algorithm)
    cli: str           # ``metacpo train --algo``
    label: str         # in reports and tables
    meta: bool         # an inner adaptation loop (MAML)
    constrained: bool  # CPO steps (else TRPO steps: the cost is measured, not constrained)
    color: str         # figure colour, marker and line style (identical curves stay visible)
    marker: str
    linestyle: str

    @property
    def config_name(self) -> str:
        """The AlgorithmConfig class in ``metacpo_rllib.rllib.config``."""
        return f"{self.name}Config"

    def algorithm_class(self) -> type:
        """The RLlib Algorithm class (imports the RLlib layer)."""
        return getattr(importlib.import_module("metacpo_rllib.rllib.algorithm"), self.name)

    def config_class(self) -> type:
        """The AlgorithmConfig class (imports the RLlib layer)."""
        return getattr(importlib.import_module("metacpo_rllib.rllib.config"), self.config_name)

    def style(self) -> dict[str, Any]:
        """matplotlib keyword arguments of this algorithm's lines."""
        return {"color": self.color, "marker": self.marker, "linestyle": self.linestyle,
                "label": self.name}


#: The four algorithms, in the order of reports and figures.
ALGORITHM_TABLE: tuple[AlgorithmInfo, ...] = (
    AlgorithmInfo("MetaCPO", "meta-cpo", "Meta-CPO", True, True, "tab:blue", "o", "-"),
    AlgorithmInfo("MetaTRPO", "meta-trpo", "Meta-TRPO", True, False, "tab:orange", "s", "--"),
    AlgorithmInfo("CPO", "cpo", "CPO", False, True, "tab:green", "^", "-."),
    AlgorithmInfo("TRPO", "trpo", "TRPO", False, False, "tab:red", "D", ":"),
)

#: Tune / RLlib names ("MetaCPO", ...) and CLI names ("meta-cpo", ...), in table order.
TUNE_NAMES: tuple[str, ...] = tuple(a.name for a in ALGORITHM_TABLE)
CLI_NAMES: tuple[str, ...] = tuple(a.cli for a in ALGORITHM_TABLE)


def algorithm_info(name: str) -> AlgorithmInfo:
    """The table row of a Tune name ("MetaCPO") or CLI name ("meta-cpo"); KeyError naming
    the valid names otherwise."""
    for info in ALGORITHM_TABLE:
        if name in (info.name, info.cli):
            return info
    raise KeyError(f"unknown algorithm {name!r}; expected one of {', '.join(TUNE_NAMES)} "
                   f"(or {', '.join(CLI_NAMES)})")
