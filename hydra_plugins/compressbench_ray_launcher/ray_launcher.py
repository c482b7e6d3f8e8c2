"""Hydra jobs as Ray tasks, on a running Ray cluster (``address``) or one started for the sweep.

Why our own: ``hydra-ray-launcher`` 1.2.2 pins ``cloudpickle==2.2.1`` while joblib (mlflow's,
through scikit-learn) needs cloudpickle 3, so the project's one install command cannot hold both.
This launcher does what that one does for a cluster that already exists: compose every
job's config here, run ``hydra.core.utils.run_job`` in a Ray task with the job's share of
CPUs, return the ``JobReturn``s in order (a failed job's exception travels back and the
sweeper sees it). Each job writes its own folder under ``hydra.sweep.dir``; the cluster's
nodes need the project at the same path and the same Python environment (a shared
filesystem, as on a SLURM cluster, or a container image).

A local instance (no ``address``) is started in Ray's single-machine mode
(``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``): Ray otherwise replaces a loopback node address by
the host's outward address, and its servers would listen there instead of on 127.0.0.1.
"""


import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


@dataclass
class RayLauncherConf:
    _target_: str = "hydra_plugins.compressbench_ray_launcher.ray_launcher.RayLauncher"
    #: ray.init() arguments: address "auto" / "ray://host:port" / null (start a local instance).
    init: Any = field(default_factory=lambda: {"address": None, "include_dashboard": False})
    #: Resources of each job's Ray task (CPUs a trial may use).
    remote: Any = field(default_factory=lambda: {"num_cpus": 1})


ConfigStore.instance().store(group="hydra/launcher", name="compressbench_ray", node=RayLauncherConf,
                             provider="compressbench")


def _run_one(hydra_context: HydraContext, config: DictConfig, task_function: TaskFunction,
             singleton_state: dict[Any, Any]) -> JobReturn:
    setup_globals()
    Singleton.set_state(singleton_state)
    return run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                   job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")


def _keywords(setting: Any) -> dict[str, Any]:
    """A launcher setting (the yaml's mapping, interpolations resolved) as keyword arguments."""
    if isinstance(setting, DictConfig):  # a mapping node: its container is a dict with the yaml's string keys
        return cast(dict[str, Any], OmegaConf.to_container(setting, resolve=True))
    return dict(setting)


class RayLauncher(Launcher):
    def __init__(self, init: Any, remote: Any) -> None:
        self.init_args = _keywords(init)
        self.remote_args = _keywords(remote)
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None
        self.task_function: TaskFunction | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context, self.task_function = config, hydra_context, task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        if self.init_args.get("address") is None:
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # read when ray is imported
        import ray

        assert self.config is not None and self.hydra_context is not None and self.task_function is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        if not ray.is_initialized():
            ray.init(**{k: v for k, v in self.init_args.items() if v is not None})
        log.info("Launching %d jobs on Ray (%s)", len(job_overrides), ray.get_runtime_context().gcs_address)
        task = ray.remote(_run_one).options(**self.remote_args)
        state = Singleton.get_state()
        pending = []
        for offset, overrides in enumerate(job_overrides):
            idx = initial_job_idx + offset
            log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = f"ray_{idx}"
                sweep_config.hydra.job.num = idx
            pending.append(task.remote(self.hydra_context, sweep_config, self.task_function, state))
        return ray.get(pending)
