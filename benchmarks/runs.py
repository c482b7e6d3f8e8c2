"""Who owns a RUNNING MLflow run, and ending the runs whose process is gone (issue 11).

A run stopped by Ctrl-C or SIGTERM marks itself KILLED (:class:`Interrupted`,
benchmarks.tracking); one killed with SIGKILL (or by a power cut) cannot. So every run carries
the host, process id and process start time of its process (:func:`process_tags`), and the
next run, or ``python -m benchmarks.runs cleanup``, marks a RUNNING run of this host whose
process no longer runs (or whose pid now belongs to another process) as KILLED, with the
reason in the tag ``killed_reason``. Runs of other hosts are left alone: their processes
cannot be seen from here.

    python -m benchmarks.runs cleanup [--tracking-uri URI] [--experiment NAME] [--dry-run]
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

HOST_TAG, PID_TAG, PID_START_TAG = "host", "pid", "pid_start_time"
#: Two start times of one process read apart agree to the clock tick; another process differs by more.
_START_TOLERANCE_S = 1.0


class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped a run, which was marked KILLED; the exit code is the shell's 128 + signal.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int, run_name: str, run_id: str) -> None:
        super().__init__(f"interrupted: run {run_name} ({run_id}) marked KILLED")
        self.signal_name = signal.Signals(signum).name
        self.exit_code = 128 + signum


def process_tags() -> dict[str, str]:
    """The tags that tie a run to this process."""
    me = psutil.Process()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(me.pid), PID_START_TAG: f"{me.create_time():.2f}"}


def process_gone(tags: dict[str, str]) -> str | None:
    """Why the process that owns a run is gone, or None while it runs (or when it is not of this host)."""
    host = socket.gethostname()
    if tags.get(HOST_TAG) != host or not tags.get(PID_TAG, "").isdigit():
        return None
    pid = int(tags[PID_TAG])
    try:
        process = psutil.Process(pid)
        started, status = process.create_time(), process.status()
    except psutil.NoSuchProcess:
        return f"process {pid} on {host} is not running"
    if status == psutil.STATUS_ZOMBIE:
        return f"process {pid} on {host} has exited (a zombie)"
    recorded = float(tags.get(PID_START_TAG) or started)
    if abs(started - recorded) > _START_TOLERANCE_S:
        return f"pid {pid} on {host} belongs to another process now (started {_when(started)}, the run's {_when(recorded)})"
    return None


def mark_orphans(client: MlflowClient, experiment_ids: list[str], dry_run: bool = False) -> list[tuple[str, str]]:
    """Mark the RUNNING runs of this host whose process is gone as KILLED; return (run id, reason) of each."""
    from mlflow.entities import RunStatus

    running = client.search_runs(experiment_ids, filter_string="attributes.status = 'RUNNING'", max_results=1000)
    marked = []
    for run in running:
        reason = process_gone(run.data.tags)
        if reason is None:
            continue
        marked.append((run.info.run_id, reason))
        if not dry_run:
            client.set_tag(run.info.run_id, "end_reason", "process gone")
            client.set_tag(run.info.run_id, "killed_reason", f"{reason}; marked KILLED by process {os.getpid()} at {_when()}")
            client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.KILLED))
    return marked


def _when(timestamp: float | None = None) -> str:
    moment = _dt.datetime.fromtimestamp(timestamp, _dt.UTC) if timestamp is not None else _dt.datetime.now(_dt.UTC)
    return moment.isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runs", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    cleanup = commands.add_parser("cleanup", help="mark RUNNING runs whose process is gone as KILLED")
    cleanup.add_argument("--tracking-uri", default=None, help="default: the run config's logger.tracking_uri")
    cleanup.add_argument("--experiment", default=None, help="default: every experiment of the store")
    cleanup.add_argument("--dry-run", action="store_true", help="list them, change nothing")
    args = parser.parse_args(argv)
    for var, value in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "1")):
        os.environ.setdefault(var, value)

    from benchmarks.preflight import check_tracking_store, default_logger
    from benchmarks.schema import ConfigError

    logger_cfg = default_logger()
    if args.tracking_uri:
        logger_cfg.tracking_uri = args.tracking_uri
    try:
        check_tracking_store(logger_cfg)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from mlflow.tracking import MlflowClient

    client = MlflowClient(str(logger_cfg.tracking_uri))
    experiments = client.search_experiments(filter_string=f"name = '{args.experiment}'" if args.experiment else None)
    if args.experiment and not experiments:
        print(f"error: --experiment: no experiment {args.experiment!r} in {logger_cfg.tracking_uri}", file=sys.stderr)
        return 2
    marked = mark_orphans(client, [e.experiment_id for e in experiments], dry_run=args.dry_run)
    for run_id, reason in marked:
        print(f"{'would mark' if args.dry_run else 'marked'} run {run_id} KILLED: {reason}")
    print(f"{len(marked)} run(s) {'to mark' if args.dry_run else 'marked'} KILLED in {logger_cfg.tracking_uri}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
