"""``python -m hardware``: list devices, predict a model's latency, profile tables, validate emulators.

    python -m hardware list [--json]
    python -m hardware predict --hw pixel1 --model mobilenetv2_100 --input-size 224 [--batch-size 1]
    python -m hardware profile --hw local_cpu --threads 1 --space mobilenetv2 --space resnet \\
        --out hardware/tables/local_cpu.json
    python -m hardware profile --hw local_cpu --threads 1 --import benchmarks.models --model resnet20_cifar \\
        --input-size 32 --out hardware/tables/local_cpu.json   # merges into an existing table
    python -m hardware profile --kernels --samples 300 --out hardware/tables/local_cpu_kernels.json
    python -m hardware calibrate --hw local_cpu_table [--n 40]   # in-sequence scale and per-unit overhead
    python -m hardware validate --hw local_cpu_table [--n 50]
    python -m hardware fit --name my_phone --measurements rows.csv --base pixel1_kernels   # a new device

``--set key=value`` overrides any key of the device's yaml (``--set threads=1``). ``--model``
names a timm model; ``--import MODULE`` first imports a module that registers more models
into timm (``--import benchmarks.models``: the project's zoo; hardware itself never imports
the packages above it). Only
``predict`` and ``list --json`` write to stdout (one JSON document); progress and logs go
to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import sys
from pathlib import Path
from typing import Any

from hardware.target import HardwareError


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- list ---------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from hardware.registry import discover

    devices = discover(args.conf_dir)
    if args.json:
        print(json.dumps([d.as_row() for d in devices.values()], indent=1))
        return 0
    rows = [("name", "kind", "calibration", "target")] + [
        (d.name, d.kind, d.calibration, d.target) for d in devices.values()
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)).rstrip())
    return 0


# -- predict ------------------------------------------------------------------------------
def create_model(name: str, imports: list[str] | None = None, **kwargs: Any):
    """A timm model, no pretrained weights, after importing the ``imports`` that register models into timm."""
    import timm

    for module in imports or []:
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise HardwareError(f"--import {module}: {error}") from None
    if not timm.is_model(name):
        close = timm.list_models(f"*{name[:6]}*")[:8]
        raise HardwareError(
            f"unknown model {name!r} (not registered in timm); similar: {close}. A model of another package needs "
            "--import <the module that registers it>, e.g. --import benchmarks.models for the project's zoo"
        )
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def _runs_on(model: Any, in_chans: int, size: int) -> str | None:
    """None if one image of ``size`` px passes through ``model``, else the first line of the error."""
    import torch

    try:
        with torch.no_grad():
            model(torch.zeros(1, in_chans, size, size))
    except RuntimeError as error:
        return str(error).strip().splitlines()[0]
    return None


def check_input_size(model: Any, name: str, in_chans: int, size: int) -> None:
    """Refuse an input smaller than the model's minimum, naming the smallest that works (found by bisection)."""
    problem = _runs_on(model, in_chans, size)
    if problem is None:
        return
    default = int(getattr(model, "pretrained_cfg", {}).get("input_size", (in_chans, 224, 224))[-1])
    if default <= size or _runs_on(model, in_chans, default) is not None:
        raise HardwareError(f"--model {name} does not run on {in_chans}x{size}x{size} inputs ({problem}); "
                            "check --input-size and --in-chans")
    low, high = size, default  # fails at low, runs at high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if _runs_on(model, in_chans, middle) is None else (middle, high)
    raise HardwareError(f"--input-size {size} is below {name}'s minimum: it runs from --input-size {high} "
                        f"({problem} at {size})")


def cmd_predict(args: argparse.Namespace) -> int:
    from hardware.registry import instantiate, parse_overrides

    for flag, value in (("--input-size", args.input_size), ("--batch-size", args.batch_size), ("--in-chans", args.in_chans)):
        if value is not None and value < 1:
            raise HardwareError(f"{flag} must be >= 1, got {value}")
    overrides = parse_overrides(args.set)
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    with contextlib.redirect_stdout(sys.stderr):
        target = instantiate(args.hw, overrides, args.conf_dir)
        model = create_model(args.model, args.imports, in_chans=args.in_chans)
        check_input_size(model, args.model, args.in_chans, args.input_size)
        shape = (target.batch_size, args.in_chans, args.input_size, args.input_size)
        report = target.latency(model, shape)
    result: dict[str, Any] = {
        "hw": args.hw,
        "model": args.model,
        "input_size": args.input_size,
        "batch_size": target.batch_size,
        "latency_ms": report.latency_ms,
        "source": report.source,
        "calibration": report.calibration,
        "spread_ms": report.spread_ms,
    }
    if report.energy_mj is not None:
        result["energy_mj"] = report.energy_mj
    if report.memory is not None:
        result["memory"] = report.memory
    if report.notes:
        result["notes"] = report.notes
    if args.provenance:
        result["provenance"] = report.provenance
    print(json.dumps(result, default=str))
    return 0


# -- profile ------------------------------------------------------------------------------
def profile_kernels(args: argparse.Namespace) -> int:
    """Sample ``--samples`` kernel configurations and time each with one thread on the thread-CPU clock."""
    from hardware.kernelcost import profiling
    from hardware.protocol import TimingProtocol

    if args.space or args.model:
        raise HardwareError("--kernels samples kernel configurations itself; drop --space/--model")
    protocol = TimingProtocol(warmup=args.warmup, repeats=args.repeats, min_time_s=args.min_time, clock="thread_cpu")
    kernels = profiling.sample_kernels(args.samples, args.seed)
    _log(f"measuring {len(kernels)} kernel configurations and {args.networks} sampled networks (seed {args.seed}), "
         "1 thread, thread-CPU clock")
    entries = profiling.measure_kernels(kernels, protocol)
    networks = profiling.measure_networks(args.networks, args.seed, protocol)
    out = profiling.save_table(Path(args.out), entries, protocol, args.seed, networks)
    table = profiling.load_table(out)
    _log(f"wrote {out}: {len(table['entries'])} kernels, {len(table.get('networks', []))} networks")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    from hardware import lookup, search_space
    from hardware.protocol import TimingProtocol
    from hardware.registry import instantiate, parse_overrides

    if args.kernels:
        return profile_kernels(args)
    if not args.space and not args.model:
        raise HardwareError("profile needs --space NAME (repeatable) or --model NAME --input-size N")
    if args.model and not args.input_size:
        raise HardwareError("--model needs --input-size (the side of the square input image)")
    overrides = parse_overrides(args.set)
    if args.threads is not None:
        overrides["threads"] = args.threads
    overrides.setdefault("per_layer", False)
    with contextlib.redirect_stdout(sys.stderr):
        target = instantiate(args.hw, overrides, args.conf_dir)
    protocol = TimingProtocol(warmup=args.warmup, repeats=args.repeats, min_time_s=args.min_time, clock=args.clock)
    if args.clock == "thread_cpu" and target.threads != 1:
        raise HardwareError(f"--clock thread_cpu needs a single thread, hw {args.hw!r} has threads={target.threads}")

    out = Path(args.out)
    table = lookup.LatencyTable.load(out) if out.is_file() else lookup.LatencyTable()
    if len(table):
        meta = table.metadata
        mismatched = {
            k: (meta.get(k), v)
            for k, v in (
                ("threads", target.threads),
                ("granularity", args.granularity),
                ("clock", args.clock),
                ("rotate_bytes", args.rotate_bytes),
            )
            if meta.get(k) != v
        }
        if mismatched:
            raise HardwareError(
                f"{out} was profiled with other settings {mismatched}; use another --out or the same settings"
            )
        _log(f"merging into {out} ({len(table)} entries)")

    units: list[lookup.Unit] = []
    sources = list(table.metadata.get("sources", []))
    for name in args.space or []:
        space = search_space.get_space(name)
        for _arch_name, config in search_space.sample_architectures([name], args.samples, args.seed):
            model = search_space.build(config)
            units += lookup.model_units(model, search_space.input_shape_of(config, target.batch_size), args.granularity)
        sources.append({"space": name, "samples": args.samples, "seed": args.seed, "input_size": space.input_size})
    if args.model:
        model = create_model(args.model, args.imports, in_chans=args.in_chans)
        shape = (target.batch_size, args.in_chans, args.input_size, args.input_size)
        units += lookup.model_units(model, shape, args.granularity)
        sources.append({"model": args.model, "input_size": args.input_size, "in_chans": args.in_chans})
    grid = () if args.no_grid else tuple(int(g) for g in args.grid.split(","))
    wanted = lookup.bracket_units(units, grid, args.narrower) if grid else list({u.key: u for u in units}.values())
    todo = [u for u in wanted if u not in table]
    _log(
        f"{len(units)} unit instances, {len(wanted)} table units ({len(todo)} to measure) on {target.name}, "
        f"threads={target.threads}, clock={args.clock}"
    )

    def progress(done: int, total: int, unit: lookup.Unit) -> None:
        if done % 50 == 0 or done == total:
            _log(f"  {done}/{total} measured")
            table.save(out)  # a long profile survives an interruption

    table.metadata.update(
        {
            "granularity": args.granularity,
            "channel_grid": list(grid),
            "clock": args.clock,
            "rotate_bytes": args.rotate_bytes,
            "sources": sources,
            "spaces": sorted({s["space"] for s in sources if "space" in s}),
        }
    )
    lookup.profile(wanted, target, protocol, table, progress, rotate_bytes=args.rotate_bytes)
    table.save(out)
    _log(f"wrote {out}: {len(table)} entries")
    return 0


# -- validate -----------------------------------------------------------------------------
def stability_lines(threads_options: list[int | None], clock_options: list[str]) -> list[str]:
    """Coefficient of variation of a ResNet-20 (CIFAR, batch 1) measured with local_cpu.

    The network is hardware.search_space's ResNet-20 (He et al. 2016), so that the check
    needs no model zoo of the packages above hardware.
    """
    from hardware import search_space
    from hardware.measured import LocalCPU
    from hardware.protocol import machine_provenance

    model, label = search_space.build(search_space.RESNET20_CONFIG), "ResNet-20 of hardware.search_space"
    lines = [
        f"### Measured-latency stability: {label}, 1x3x32x32, batch 1",
        "",
        f"Machine: {machine_provenance()['cpu']}, load average (1 min) at start "
        f"{machine_provenance()['load_average_1m']:.1f} on {machine_provenance()['logical_cpus']} logical CPUs.",
        "",
        "| threads | clock | median (ms) | IQR (ms) | CV | robust CV | repeats | verdict |",
        "|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for threads in threads_options:
        for clock in clock_options:
            if clock == "thread_cpu" and threads != 1:
                continue
            target = LocalCPU(threads=threads, clock=clock, repeats=200, min_time_s=2.0, warmup=20)
            report = target.latency(model, (1, 3, 32, 32))
            verdict = "machine too noisy (> 5%)" if report.noisy else "ok (< 5%)"
            lines.append(
                f"| {target.threads} | {clock} | {report.latency_ms:.3f} | {report.spread_ms:.3f} | "
                f"{report.provenance['cv']:.1%} | {report.provenance['robust_cv']:.1%} | {report.provenance['repeats']} | "
                f"{verdict} |"
            )
    return lines + [""]


def cmd_validate(args: argparse.Namespace) -> int:
    from hardware import validation
    from hardware.protocol import machine_provenance
    from hardware.registry import instantiate, parse_overrides

    with contextlib.redirect_stdout(sys.stderr):
        target = instantiate(args.hw, parse_overrides(args.set), args.conf_dir)
        load_before = machine_provenance()["load_average_1m"]
        options: dict[str, Any] = {"progress": _log}
        if args.n is not None:
            options["n"] = args.n
        if args.seed is not None:
            options["seed"] = args.seed
        cases = target.validation_cases(**options)
        load_after = machine_provenance()["load_average_1m"]
        extra = [
            f"Machine load average (1 min): {load_before:.1f} before, {load_after:.1f} after "
            f"({machine_provenance()['logical_cpus']} logical CPUs, shared with other jobs).",
            "",
        ]
        if target.source == "table" and not args.no_stability:
            extra += stability_lines([1, None], ["wall", "thread_cpu"])
        if hasattr(target, "validation_lines"):
            extra += target.validation_lines(cases)
        if args.note:
            extra += [args.note, ""]
        md, png = validation.write_report(
            args.hw, cases, target.describe(), Path(args.results), extra, target.stated_error_file
        )
    _log(f"{args.hw}: {len(cases)} cases; " + " ".join(validation.headline(cases)) + f" Wrote {md} and {png}")
    return 0


# -- calibrate ----------------------------------------------------------------------------
def cmd_calibrate(args: argparse.Namespace) -> int:
    from hardware.registry import instantiate, parse_overrides

    with contextlib.redirect_stdout(sys.stderr):
        target = instantiate(args.hw, parse_overrides(args.set), args.conf_dir)
        if not hasattr(target, "calibrate"):
            raise HardwareError(
                f"hw {args.hw!r} ({type(target).__name__}) has no sequence calibration; table targets do"
            )
        result = target.calibrate(n=args.n, seed=args.seed, progress=_log)
    _log(
        f"{args.hw}: entries x {result['sequence_scale']:.3f} + {result['per_unit_overhead_ms'] * 1e3:.2f} us per unit, from "
        f"{len(result['architectures'])} architectures (seed {result['seed']}); written to {target.table_path}"
    )
    return 0


# -- parser -------------------------------------------------------------------------------
IMPORT_HELP = "import a module that registers models into timm first (repeatable), e.g. benchmarks.models"


def build_parser() -> argparse.ArgumentParser:
    from hardware import fit
    from hardware.lookup import DEFAULT_CHANNEL_GRID, GRANULARITIES

    parser = argparse.ArgumentParser(prog="python -m hardware", description=__doc__.split("\n")[0])
    parser.add_argument("--conf-dir", type=Path, default=None, help="device yamls (default: conf/hw of the project)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="every device in conf/hw with its kind and calibration")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("predict", help="latency of one model on one device, as one JSON object on stdout")
    p.add_argument("--hw", required=True, help="device name (python -m hardware list)")
    p.add_argument("--model", required=True, help="timm or registered model name, e.g. mobilenetv2_100")
    p.add_argument("--input-size", type=int, required=True, help="side of the square input image")
    p.add_argument("--in-chans", type=int, default=3, help="input channels (1 for MNIST models such as lenet5)")
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE", help=IMPORT_HELP)
    p.add_argument("--batch-size", type=int, default=None, help="default: the device's batch_size")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key of the device yaml")
    p.add_argument("--provenance", action="store_true", help="include the report's provenance")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("profile", help="measure a lookup table of layer configurations")
    p.add_argument("--hw", default="local_cpu", help="measured device to profile on (a PyTorch CPU target)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the device yaml's)")
    p.add_argument("--space", action="append", help="search space(s) to sample: mobilenetv2, resnet, tiny")
    p.add_argument("--samples", type=int, default=300, help="architectures sampled per space (kernels with --kernels)")
    p.add_argument("--kernels", action="store_true",
                   help="sample and measure kernel configurations (1 thread, thread-CPU clock) into a kernel table")
    p.add_argument("--networks", type=int, default=0,
                   help="with --kernels: whole networks sampled from the mobilenetv2/resnet spaces, timed for the "
                        "in-network cost of kernels (hardware.kernelcost.composition)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", help="profile this timm/registered model's layers instead of (or besides) a space")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--in-chans", type=int, default=3, help="input channels of --model (1 for MNIST models)")
    p.add_argument("--import", dest="imports", action="append", metavar="MODULE", help=IMPORT_HELP)
    p.add_argument("--out", required=True, help="table file (JSON); an existing one is extended")
    p.add_argument(
        "--grid", default=",".join(map(str, DEFAULT_CHANNEL_GRID)), help="channel counts profiled for interpolation"
    )
    p.add_argument("--no-grid", action="store_true", help="profile the exact channel counts only")
    p.add_argument("--narrower", action="store_true",
                   help="also every grid count below each layer's widths: a table for pruning searches")
    p.add_argument("--granularity", choices=GRANULARITIES, default="block")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--min-time", type=float, default=0.05, help="seconds of timed work per entry at least")
    p.add_argument("--clock", choices=("wall", "thread_cpu"), default="wall")
    p.add_argument(
        "--rotate-bytes",
        type=int,
        default=0,
        help="cycle through copies of a layer whose weights add up to this many bytes (cold weights)",
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("calibrate", help="fit a table's in-sequence scale and per-unit overhead on the profile's own architectures")
    p.add_argument("--hw", required=True, help="table device, e.g. local_cpu_table")
    p.add_argument("--n", type=int, default=40, help="architectures measured end to end")
    p.add_argument("--seed", type=int, default=None, help="default: the profile's seed (never the validation's)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("validate", help="an emulated device against measurements: results/hardware_validation.*")
    p.add_argument("--hw", required=True, help="emulated device (local_cpu_table, pixel1, ...)")
    p.add_argument("--n", type=int, default=None, help="random architectures (table targets; default 50)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--results", default=str(Path(__file__).resolve().parents[1] / "results"))
    p.add_argument("--no-stability", action="store_true", help="skip the ResNet-20 coefficient-of-variation check")
    p.add_argument("--note", default=None, help="a line added to this target's section")
    p.add_argument("--set", action="append", metavar="KEY=VALUE")
    p.set_defaults(func=cmd_validate)

    fit.add_parser(sub, IMPORT_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except HardwareError as error:
        _log(f"error: {error}")
        return 2
