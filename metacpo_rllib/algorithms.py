"""The four algorithms, once: how the CLI, Tune / RLlib, the configs, reports and figures name
them. Plain data, importing nothing of the package and no Ray (the CLI checks its flags and
``import metacpo_rllib`` runs without Ray); ``rllib.config.config_class(name)`` and Tune's
registry map a name to its classes."""
from __future__ import annotations

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
        """The name of its AlgorithmConfig class (``rllib.config``)."""
        return f"{self.name}Config"

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
