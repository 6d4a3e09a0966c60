"""The paper's evaluation tables and Fig. 8-style chart from lmms-eval result folders of several runs.

    python eval/report.py --run Baseline=results/base --run +Manager=results/manager \
        --baseline Baseline --out reports/main
    python eval/report.py ... --subset ablation      # the paper's 9-dataset ablation subset

Writes report.md (Markdown tables), datasets.csv, summary.csv and summary.png to --out.
"""

from __future__ import annotations

import argparse

from llava_manager.evaluation.report import write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run",
        action="append",
        required=True,
        metavar="NAME=DIR",
        help="a run's name and its lmms-eval --output_path folder; repeat for each run",
    )
    parser.add_argument("--baseline", help="the run the deltas are taken against")
    parser.add_argument("--subset", default="all", choices=["all", "ablation"])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    runs = {}
    for item in args.run:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            parser.error(f"--run {item!r}: expected NAME=DIR")
        runs[name] = folder
    for kind, path in write_report(runs, args.out, args.baseline, args.subset).items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
