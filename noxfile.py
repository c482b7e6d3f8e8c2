"""Developer sessions: `nox -s tests`, `nox -s lint`, `nox -s typecheck`, `nox -s bench`.

Sessions run in the environment the README's install created (`pip install -e '.[dev]'`),
not in fresh virtualenvs: PyTorch alone is several GB, and CI installs once.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.default_venv_backend = "none"

TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", "DVC_NO_ANALYTICS": "1"}


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite (unit, integration on tiny configs, end-to-end CLI)."""
    session.run("python", "-m", "pytest", "-q", "--durations=15", *session.posargs, env=TELEMETRY_OFF)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff on every Python file we ship (studies and Hydra plugins included), then the import layering.

    `lint-imports` checks the contracts in pyproject.toml ([tool.importlinter]): benchmarks -> methods
    -> hardware with no way back, and method families that borrow nothing from each other.
    """
    session.run("ruff", "check", "benchmarks", "methods", "hardware", "hydra_plugins", "tests", "scripts", "noxfile.py")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over the packages pyproject.toml's [tool.mypy] lists: the run pipeline and its studies, the methods,
    the hardware targets and the Hydra plugins."""
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Paper-scale runs are DVC stages: `dvc repro` rebuilds results/ (see README)."""
    session.run("dvc", "repro", *session.posargs, env=TELEMETRY_OFF)
