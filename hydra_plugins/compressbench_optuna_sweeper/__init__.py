"""A Hydra sweeper driving current Optuna (5.x): `python -m benchmarks -m sweep=<preset>`.

Hydra finds it through the ``hydra_plugins`` namespace package; the config store entry
``hydra/sweeper=compressbench_optuna`` is what ``conf/sweep/*.yaml`` select.
"""

from hydra_plugins.compressbench_optuna_sweeper.config import OptunaSweeperConf

__all__ = ["OptunaSweeperConf"]
