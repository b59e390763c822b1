"""Handlers of ``fednas plot`` and ``fednas dashboard`` (the parsers are in ``fednas.cli``)."""

from __future__ import annotations

import argparse

from fednas.config import ConfigError

__all__ = ["run_dashboard_command", "run_plot"]


def run_plot(args: argparse.Namespace) -> int:
    from fednas.config import default_storage
    from fednas.plot import plot_study

    storage = args.storage or default_storage(args.study)
    objectives = [s.strip() for s in args.objectives.split(",")] if args.objectives else None
    try:
        result = plot_study(storage, args.study, args.out, objectives=objectives, png=not args.no_png)
    except ImportError as exc:  # plotly or matplotlib missing: the message names the extra
        raise ConfigError(str(exc)) from None
    r = result.report
    print(f"study {r.study!r}: {len(r.main.points)} completed trials, {len(r.front_table)} on the front")
    print(f"  {result.html}")
    for p in result.pngs:
        print(f"  {p}")
    if r.importances.message:
        print(f"  note: {r.importances.message}")
    return 0


def run_dashboard_command(args: argparse.Namespace) -> int:
    from fednas.config import default_storage
    from fednas.plot import run_dashboard

    storage = args.storage or default_storage(args.study or "quickstart")
    run_dashboard(storage, study=args.study, host=args.host, port=args.port)
    return 0
