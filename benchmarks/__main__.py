"""`python -m benchmarks [+method=<name>] [+hw=<name>] [group=option ...]`: one run, or a grid with -m."""

from __future__ import annotations

import logging
import os
import warnings

# No telemetry: these machines have no internet, and nothing should wait on it.
for _var, _value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1"), ("DVC_NO_ANALYTICS", "1")):
    os.environ.setdefault(_var, _value)

import sys  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

import benchmarks  # noqa: E402,F401  (registers the config resolvers)
from benchmarks.preflight import one_line, prepare, user_errors, with_defaults  # noqa: E402
from benchmarks.runs import Interrupted  # noqa: E402


def _quiet_libraries() -> None:
    """Keep the console to our stage lines and Lightning's progress bars."""
    for name in ("mlflow", "alembic", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*Checkpoint directory.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> float | tuple[float, ...]:
    """One run; a user's error is one line (exit 2), Ctrl-C / SIGTERM one line (exit 130 / 143), no traceback.

    In a multirun the errors go on to the sweeper, which records the trial as failed and goes on.
    ``HYDRA_FULL_ERROR=1`` shows the traceback of a user's error too.
    """
    single = str(HydraConfig.get().mode) == "RunMode.RUN"
    _quiet_libraries()
    try:
        # settings first, before torch, Lightning and MLflow are imported (a typo answers at once);
        # then method, target, data and model, each check importing only what it needs
        prepared = prepare(with_defaults(cfg))
        from benchmarks.pipeline import run

        return run(cfg, prepared)
    except Interrupted as stop:
        _print_last(str(stop), stop)
        raise SystemExit(stop.exit_code) from None
    except KeyboardInterrupt:
        print("interrupted before a run was created", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:
        if not single or os.environ.get("HYDRA_FULL_ERROR") == "1" or not isinstance(err, user_errors()):
            raise
        _print_last(f"error: {one_line(err)}", err)
        raise SystemExit(2) from None


def _print_last(line: str, error: BaseException) -> None:
    """The error's one line, then where its run lies (the note ``mlflow_run`` added): the console's last line."""
    print(line, *getattr(error, "__notes__", ()), sep="\n", file=sys.stderr)


if __name__ == "__main__":
    main()
