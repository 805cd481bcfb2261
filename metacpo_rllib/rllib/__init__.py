"""The RLlib layer: MetaCPO / MetaTRPO / CPO / TRPO configs and algorithms (new API stack)."""
from metacpo_rllib.algorithms import ALGORITHM_TABLE
from metacpo_rllib.rllib.algorithm import CPO, TRPO, MetaCPO, MetaTRPO
from metacpo_rllib.rllib.config import (CPOConfig, MetaCPOConfig, MetaTRPOConfig, TRPOConfig,
                                        config_class)
from metacpo_rllib.rllib.registry import ALGORITHMS, install_init_hook, register_all

register_all()
install_init_hook()

#: CLI algorithm names -> config classes.
ALGO_CONFIGS = {a.cli: config_class(a.name) for a in ALGORITHM_TABLE}

__all__ = [
    "ALGORITHMS", "ALGO_CONFIGS", "CPO", "CPOConfig", "MetaCPO", "MetaCPOConfig", "MetaTRPO",
    "MetaTRPOConfig", "TRPO", "TRPOConfig",
]
