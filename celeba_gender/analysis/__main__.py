"""python -m celeba_gender.analysis SWEEP_DIR: the sweep's report folder in one command."""

from __future__ import annotations

from celeba_gender.quiet_interrupt import quiet_imports

with quiet_imports(__name__):  # a Ctrl-C while these import (seconds) ends the command at once
    import argparse
    import logging
    import sys

    from celeba_gender.analysis.report import (
        analyze_sweep,
        execute_notebook,
        load_settings,
        write_report,
    )
    from celeba_gender.analysis.status import format_status, sweep_status
    from celeba_gender.data import DataError
    from celeba_gender.startup import start_command


def main(argv: list[str] | None = None) -> int:
    start_command()
    parser = argparse.ArgumentParser(
        prog="python -m celeba_gender.analysis",
        description="Tables, intervals, paired tests, fairness, calibration, figures and "
        "conclusions of a sweep (defaults: conf/analysis.yaml).",
    )
    parser.add_argument(
        "sweep_dirs",
        nargs="+",
        metavar="SWEEP_DIR",
        help="sweep folders, e.g. outputs/multiruns/<time> (several: one report, each "
        "configuration counted once)",
    )
    parser.add_argument(
        "--status",
        action="store_true",
        help="only list each job as done / interrupted / failed / not started",
    )
    parser.add_argument("--out", help="report folder (default: the first SWEEP_DIR/report)")
    parser.add_argument(
        "--data-root", help="CelebA copy the runs were tested on, if it moved since"
    )
    parser.add_argument("--resamples", type=int, help="bootstrap resamples per run")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting of conf/analysis.yaml, e.g. --set bootstrap.confidence=0.9",
    )
    parser.add_argument(
        "--no-notebook", action="store_true", help="do not execute notebooks/analysis.ipynb"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    settings = load_settings(data_root=args.data_root, **{"bootstrap.resamples": args.resamples})
    settings.merge_with_dotlist(args.set)
    try:
        if args.status:
            for sweep_dir in args.sweep_dirs:
                print(f"{sweep_dir}: {format_status(sweep_status(sweep_dir))}")
            return 0
        analysis = analyze_sweep(args.sweep_dirs, settings)
        report_dir = write_report(analysis, args.out)
        print(f"report: {report_dir / 'report.md'}")
        for line in analysis.conclusions:
            print(f"- {line}")
        if not args.no_notebook:
            notebook = execute_notebook(report_dir, settings)
            print(f"executed notebook: {notebook}")
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
