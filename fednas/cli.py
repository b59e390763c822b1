"""The ``fednas`` command line: search, pareto, arch info, export, train, plot, dashboard.

User errors (config, data, storage, architecture files) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fednas.config import DEFAULT_CONFIG

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    import fednas

    p = argparse.ArgumentParser(prog="fednas", description="Federated neural architecture search.")
    p.add_argument("--version", action="version", version=f"fednas {fednas.__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("search", help="run or resume a study")
    s.add_argument("config", nargs="?", default=None, help=f"study TOML (default: {DEFAULT_CONFIG})")
    s.add_argument("--storage", help="Optuna storage URL (default: sqlite:///<config dir>/<study>.db)")
    s.add_argument("--study", help="study name (default: study.name in the config)")
    s.add_argument("--trials", type=int, help="number of completed trials to reach")
    s.add_argument("--seed", type=int, help="study seed")
    s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set federation.rounds=3 (repeatable)")
    s.add_argument("--jobs", type=int, default=1, help="worker processes sharing the study (default 1)")
    s.add_argument("--quiet", action="store_true", help="no progress display")
    s.add_argument("--check", action="store_true", help="validate the config, data and bounds; write nothing")

    pa = sub.add_parser("pareto", help="print a study's Pareto front")
    pa.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/<study>.db)")
    pa.add_argument("--study", default="quickstart", help="study name (default: quickstart)")
    pa.add_argument("--all", action="store_true", help="all trials, not only the front")
    pa.add_argument("--tier", help="a device tier's front: only the subnets it can run (supernet studies)")
    pa.add_argument("--format", choices=("table", "json", "csv"), default="table")

    a = sub.add_parser("arch", help="architectures")
    asub = a.add_subparsers(dest="arch_command", required=True, metavar="ARCH_COMMAND")
    info = asub.add_parser("info", help="parameters, MACs and bytes of an architecture")
    info.add_argument("arch", metavar="NAME|FILE.json|BUNDLE", help="a preset, an architecture JSON file or a bundle folder")
    info.add_argument("--num-classes", type=int, default=None, help="default: the preset's (1000 for ImageNet ones), else 10")
    info.add_argument("--resolution", type=int, default=None, help="default: the preset's (224 for ImageNet ones), else 28")
    info.add_argument("--in-channels", type=int, default=None, help="default: the preset's (3 for RGB ones), else 1")
    info.add_argument("--latency", metavar="RUNTIME|TABLE.json", default=None,
                      help="also its single-image latency: measured on a runtime (onnxruntime, tflite, torch; 1 pinned "
                           "thread, median of 50 runs) or predicted from a latency table")
    info.add_argument("--json", action="store_true")
    _add_latency_parsers(sub)
    _add_export_parsers(sub)
    _add_plot_parsers(sub)
    return p


def _csv_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _add_latency_parsers(sub: argparse._SubParsersAction) -> None:
    la = sub.add_parser("latency", help="latency tables for predicting latency_ms on a target device")
    lsub = la.add_subparsers(dest="latency_command", required=True, metavar="LATENCY_COMMAND")
    pr = lsub.add_parser("profile", help="time every block configuration of a study's space on this machine")
    pr.add_argument("config", nargs="?", default=None, help=f"study TOML (default: {DEFAULT_CONFIG})")
    pr.add_argument("--out", required=True, metavar="TABLE.json", help="table to write (an existing file is kept "
                    "unless --force)")
    pr.add_argument("--force", action="store_true", help="replace an existing --out file")
    pr.add_argument("--samples", type=int, default=200, help="architectures drawn from the space, besides its two "
                    "corners (default 200)")
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--resolution", type=int, action="append", default=None,
                    help="input size (repeatable; default: the study data's)")
    pr.add_argument("--in-channels", type=int, default=None, help="default: the study data's")
    pr.add_argument("--num-classes", type=int, default=None, help="default: the study data's")
    pr.add_argument("--runtime", default=None, help="default: [latency] runtime of the config (onnxruntime)")
    pr.add_argument("--threads", type=int, default=None, help="default: [latency] threads (1)")
    pr.add_argument("--repeats", type=int, default=None, help="timed runs per unit (default: [latency] repeats)")
    pr.add_argument("--warmup", type=int, default=None, help="untimed runs per unit (default: [latency] warmup)")
    pr.add_argument("--rounds", type=int, default=3, help="interleaved passes over all units, each of warm-up "
                    "and --repeats runs (default 3): a machine whose speed drifts slows every unit alike")
    pr.add_argument("--calibrate", type=int, default=20, help="drawn architectures also timed whole, to fit what a "
                    "unit timed alone pays at its input (default 20; 0: none)")
    pr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value (repeatable)")
    pr.add_argument("--quiet", action="store_true")


def _latency(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from fednas.config import ConfigError, load_config
    from fednas.latency import profile_study
    from search_spaces import MAX_CHANNELS, MAX_CLASSES, MAX_RESOLUTION

    out = Path(args.out)
    if out.exists() and not args.force:
        raise ConfigError(f"--out: {out} exists; expected a new file (or --force to replace it)")
    if not out.parent.is_dir():
        raise ConfigError(f"--out: folder {out.parent} does not exist")
    config = load_config(args.config or DEFAULT_CONFIG, args.overrides)
    lat = config.latency
    lat = replace(lat, **{k: getattr(args, k) for k in ("runtime", "threads", "repeats", "warmup")
                          if getattr(args, k) is not None})
    lat.check()
    chans, classes, res = args.in_channels, args.num_classes, args.resolution
    if chans is None or classes is None or not res:
        train, _ = config.data.datasets(config.study.seed)
        chans = train.in_channels if chans is None else chans
        classes = train.num_classes if classes is None else classes
        res = res or [train.resolution]
    for flag, values, high in (("--in-channels", [chans], MAX_CHANNELS), ("--num-classes", [classes], MAX_CLASSES),
                               ("--resolution", res, MAX_RESOLUTION)):
        for v in values:
            if not 1 <= v <= high:
                raise ConfigError(f"{flag}: expected an integer in [1, {high:,}], got {v}")
    _quiet_libraries()

    def progress(i: int, total: int, unit: Any, timing: Any) -> None:
        if not args.quiet:
            print(f"\r  unit {i + 1}/{total}  {unit.kind:<18} {timing.ms:9.4f} ms", end="", file=sys.stderr,
                  flush=True)

    table = profile_study(config, samples=args.samples, resolutions=sorted(set(res)), in_channels=chans,
                          num_classes=classes, runtime=lat.runtime, threads=lat.threads, warmup=lat.warmup,
                          repeats=lat.repeats, rounds=args.rounds, calibrate=args.calibrate, seed=args.seed,
                          on_unit=progress)
    if not args.quiet:
        print(file=sys.stderr)
    table.save(out)
    print(f"{out}: {len(table.units):,} units of {table.source['architectures']:,} architectures at "
          f"{chans}x{'/'.join(map(str, sorted(set(res))))}, {table.runtime} {table.runtime_version}, "
          f"{table.threads} thread(s), empty call {table.overhead_ms:.4f} ms, boundary "
          f"{table.boundary_ms_per_element * 1e6:.3f} ms per million elements")
    return 0


def _add_export_parsers(sub: argparse._SubParsersAction) -> None:
    formats = ("onnx, int8, torchscript, executorch, tflite, tflite_int8, coreml, or all (comma-separated; default: "
               "the first four whose extras are installed; all: every format whose extra is installed)")
    e = sub.add_parser("export", help="export a trial's model: weights, ONNX, int8 ONNX, TorchScript, model card")
    e.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/<study>.db)")
    e.add_argument("--study", default="quickstart", help="study name (default: quickstart)")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, help="trial number")
    which.add_argument("--pick", choices=("knee", "best-accuracy", "smallest"), help="a member of the Pareto front")
    which.add_argument("--supernet", action="store_true",
                       help="a supernet study's largest subnet (inherited weights, pooled batch-norm statistics), "
                            "e.g. as a kd_teacher of later studies")
    e.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write")
    e.add_argument("--formats", type=_csv_list, default=None, help=formats)
    e.add_argument("--onnx-exporter", choices=("dynamo", "torchscript"), default=None,
                   help="torch.onnx exporter (default: dynamo when onnxscript is installed)")

    t = sub.add_parser("train", help="train one architecture with a longer federated run, then export it")
    t.add_argument("targets", nargs="*", metavar="ARCH [CONFIG]",
                   help="ARCH.json, a preset name or a bundle folder, then a study TOML "
                        f"(default: {DEFAULT_CONFIG}); with --trial only CONFIG (default: the study's own)")
    t.add_argument("--storage", help="Optuna storage URL, with --trial (default: sqlite:///studies/<study>.db)")
    t.add_argument("--study", help="study name, with --trial (default: quickstart)")
    t.add_argument("--trial", type=int, help="train the architecture of this trial")
    t.add_argument("--rounds", type=int, help="federated rounds (default: 3 x federation.rounds)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value (repeatable)")
    t.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write")
    t.add_argument("--formats", type=_csv_list, default=None, help=formats)
    t.add_argument("--onnx-exporter", choices=("dynamo", "torchscript"), default=None)
    t.add_argument("--superlink", nargs="?", const="", default=None, metavar="CONNECTION",
                   help="train on Flower's deployment runtime through `flwr run`: a SuperLink connection named in "
                        "$FLWR_HOME/config.toml (no name: its default); SuperNodes hold the data shards")


def _add_plot_parsers(sub: argparse._SubParsersAction) -> None:
    pl = sub.add_parser("plot", help="HTML report and PNG figures of a study's Pareto front")
    pl.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/<study>.db)")
    pl.add_argument("--study", default="quickstart", help="study name (default: quickstart)")
    pl.add_argument("--out", required=True, metavar="DIR", help="folder for report.html and the PNGs")
    pl.add_argument("--objectives", metavar="A,B[,C]", help="2 or 3 objectives of the main plot (default: the study's)")
    pl.add_argument("--no-png", action="store_true", help="only the HTML report")

    d = sub.add_parser("dashboard", help="serve optuna-dashboard on a study's storage (extra: dashboard)")
    d.add_argument("--storage", help="Optuna storage URL (default: sqlite:///studies/<study>.db)")
    d.add_argument("--study", help="study whose artifacts to serve (default: quickstart's storage, any study)")
    d.add_argument("--host", default="127.0.0.1")
    d.add_argument("--port", type=int, default=8080)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    from optuna.exceptions import StorageInternalError

    from fednas.config import ConfigError
    from fednas.data import DataError
    from fednas.study import StorageError

    try:
        if args.command == "search":
            return _search(args, argv)
        if args.command == "pareto":
            return _pareto(args)
        if args.command in ("export", "train"):
            from fednas.export._cli import run_export, run_train

            return run_export(args) if args.command == "export" else run_train(args)
        if args.command == "latency":
            return _latency(args)
        if args.command in ("plot", "dashboard"):
            from fednas.plot._cli import run_dashboard_command, run_plot

            return run_plot(args) if args.command == "plot" else run_dashboard_command(args)
        return _arch_info(args)
    except (ConfigError, DataError, StorageError, ValueError) as exc:
        print(f"fednas: error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except StorageInternalError as exc:  # a database server refused a write (permissions, a full disk...)
        cause = exc.__cause__
        why = str(cause).splitlines()[0] if cause is not None and str(cause) else str(exc).splitlines()[0]
        print(f"fednas: error: the storage refused a write ({_one_line(why)})", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print("fednas: interrupted", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly, as Unix tools do
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _one_line(text: str) -> str:
    """An error message on one line: line breaks a file or flag brought in are shown escaped."""
    return "".join(ch.encode("unicode_escape").decode("ascii") if ch in _LINE_BREAKS else ch for ch in text)


def _search(args: argparse.Namespace, argv: list[str]) -> int:
    from fednas.config import ConfigError, load_config
    from fednas.search import SearchInterrupted, check_study, run_search

    path = args.config or DEFAULT_CONFIG
    if args.trials is not None and args.trials < 1:
        raise ConfigError(f"--trials: expected an integer >= 1, got {args.trials}")
    if args.jobs < 1:
        raise ConfigError(f"--jobs: expected an integer >= 1, got {args.jobs}")
    config = load_config(path, args.overrides)
    changes: dict[str, Any] = {}
    for flag, key in (("storage", "storage"), ("study", "name"), ("trials", "trials"), ("seed", "seed")):
        if getattr(args, flag) is not None:
            changes[key] = getattr(args, flag)
    if changes:
        config = config.replace_study(**changes)
        config.study.check()
    _quiet_libraries()
    if args.check:
        print(check_study(config))
        return 0
    try:
        result = run_search(config, progress=not args.quiet, jobs=args.jobs)
    except SearchInterrupted as exc:
        if exc.retried is None:
            done = "running trials were marked failed and will be retried"
        elif exc.retried:
            done = f"trial {exc.retried[0]} was marked failed and will be retried"
        else:
            done = "no trial was running"
        print(
            f"fednas: interrupted ({signal.Signals(exc.signum).name}); {done}. "
            f"Resume with the same command: fednas {shlex.join(argv)}",
            file=sys.stderr,
        )
        return 128 + exc.signum
    print(f"study {result.study_name!r} in {result.storage}: {result.completed} completed trials")
    print(_table(result.front, list(config.objectives)))
    if config.federation.tiers:
        from fednas.study import read_study, tier_fronts

        for name, front in tier_fronts(read_study(result.storage, result.study_name)).items():
            print(f"\ndevice tier {name!r}: the front of the subnets it can run")
            print(_table(front, list(config.objectives)))
    if not result.reached:
        print(f"fednas: search stopped before study.trials = {config.study.trials} was reached: {result.completed} "
              f"completed, {result.failed} failed, {result.pruned} pruned (study.max_attempts); see the reasons with "
              f"fednas pareto --all --storage {result.storage} --study {result.study_name}", file=sys.stderr)
        return 1
    return 0


def _pareto(args: argparse.Namespace) -> int:
    from fednas.config import default_storage
    from fednas.study import read_study

    _quiet_libraries()
    storage = args.storage or default_storage(args.study)
    view = read_study(storage, args.study)
    front = view.front(args.tier)  # also checks the tier's name
    trials = front
    if args.all:
        trials = [t for t in view.records if args.tier is None or args.tier in (t.attrs.get("tiers") or [])]
    objectives = list(view.objectives)  # the study's, whatever state its first trial is in
    if args.format == "json":
        print(json.dumps([t.to_dict() for t in trials], indent=2))
    elif args.format == "csv":
        print(_csv(trials, objectives), end="")
    else:
        print(_table(trials, objectives, show_state=args.all))
        privacy = view.config.privacy.describe() if view.config is not None else ""
        if privacy:
            print(f"privacy: {privacy}")
    return 0


def _arch_info(args: argparse.Namespace) -> int:
    from fednas.cost import measure
    from search_spaces import PRESETS, Preset, build_model, load_architecture

    from fednas.models import bundle_input, load_model
    from search_spaces import MAX_CHANNELS, MAX_CLASSES, MAX_RESOLUTION

    bundle = Path(args.arch).is_dir()
    if bundle:  # a bundle folder: its architecture, for the input it was trained on
        arch, ref = bundle_input(args.arch)
    else:
        arch = load_architecture(args.arch)
        ref = PRESETS.get(str(args.arch)) or Preset("", lambda: arch)  # a file: 10 classes, 1x28x28
    classes = args.num_classes if args.num_classes is not None else ref.num_classes
    res = args.resolution if args.resolution is not None else ref.resolution
    chans = args.in_channels if args.in_channels is not None else ref.in_channels
    for flag, v, high in (("--num-classes", classes, MAX_CLASSES), ("--resolution", res, MAX_RESOLUTION),
                          ("--in-channels", chans, MAX_CHANNELS)):
        if not 1 <= v <= high:
            raise ValueError(f"{flag}: expected an integer in [1, {high:,}], got {v}")
    if bundle and (classes, chans) == (ref.num_classes, ref.in_channels):
        model = load_model(args.arch)  # the trained structure: pruned channels, factorized layers
    else:
        model = build_model(arch, num_classes=classes, in_channels=chans)
    cost = measure(model, in_channels=chans, resolution=res)
    info = {**cost.to_dict(), "num_classes": classes, "blocks": arch.num_blocks, "architecture": arch.to_dict()}
    if args.latency is not None:
        info["latency"] = _arch_latency(model, (chans, res, res), args.latency)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{args.arch}: {chans}x{res}x{res} -> {classes} classes")
        print(f"  params  {cost.params:>14,}")
        print(f"  MACs    {cost.macs:>14,}")
        print(f"  bytes   {cost.bytes:>14,}")
        print(f"  blocks  {arch.num_blocks:>14}")
        if "latency" in info:
            lat = info["latency"]
            how = (f"predicted from {lat['table']} ({lat['fallback']} of {lat['units']} units estimated)"
                   if lat["source"] == "predicted" else f"measured, quartiles {lat['p25_ms']:.4g}-{lat['p75_ms']:.4g}")
            print(f"  latency {lat['ms']:>11.4g} ms  {lat['runtime']} {lat['runtime_version']}, "
                  f"{lat['threads']} thread(s), {how}")
        print("  stages  " + arch.describe())
    return 0


def _arch_latency(model: Any, shape: tuple[int, int, int], what: str) -> dict[str, Any]:
    """``arch info --latency``: a runtime name measures, anything else is read as a latency table."""
    from fednas.config import LatencyConfig
    from fednas.latency import candidate_latency
    from fednas.runtimes import RUNTIMES

    config = LatencyConfig(runtime=what) if what in RUNTIMES else LatencyConfig(table=what)
    if not config.table and RUNTIMES[what].missing():
        raise ValueError(f"--latency: runtime {what!r} needs {RUNTIMES[what].missing()}, which is not installed "
                         f"(pip install 'fednas[{RUNTIMES[what].extra}]')")
    return candidate_latency(model, shape, config).to_dict()


def _cell(v: Any) -> str:
    from fednas._format import number

    return number(v, fixed=True)


def _table(trials: list, objectives: list[str], show_state: bool = False) -> str:
    if not trials:
        return "(no completed trials)"
    extra = [m for m in ("params", "macs", "comm_bytes") if m not in objectives]
    extra += [m for m in ("accuracy_finetuned", "epsilon") if m not in objectives and any(m in t.metrics for t in trials)]
    from search_spaces import describe_arch

    head = ["#"] + (["state"] if show_state else []) + objectives + extra + ["compression", "architecture"]
    rows = []
    for t in trials:
        row = [str(t.number)] + ([t.state] if show_state else [])
        row += [_cell(t.objectives.get(o, "")) for o in objectives] + [_cell(t.metrics.get(m, "")) for m in extra]
        row.append(t.compression)
        row.append(describe_arch(t.arch) if t.arch else t.reason)
        if show_state and t.reason and t.arch:
            row[-1] += f"  ({t.reason})"
        rows.append(row)
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]
    lines = []
    for r in [head, *rows]:
        lines.append("  ".join(c.rjust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    return "\n".join(lines)


def _csv(trials: list, objectives: list[str]) -> str:
    labels: list[str] = []
    for t in trials:
        labels += [k for k in t.labels if k not in labels]
    metrics = ["params", "macs", "bytes", "comm_bytes", "upload_bytes", "download_bytes"]
    metrics += [m for m in ("accuracy_inherited", "accuracy_finetuned", "epsilon") if any(m in t.metrics for t in trials)]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["number", "state", *objectives, *[m for m in metrics if m not in objectives], *labels, "reason"])
    for t in trials:
        w.writerow([t.number, t.state, *[t.objectives.get(o, "") for o in objectives],
                    *[t.metrics.get(m, "") for m in metrics if m not in objectives],
                    *[t.labels.get(k, "") for k in labels], t.reason])
    return buf.getvalue()


def _quiet_libraries() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("flwr").setLevel(logging.ERROR)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
