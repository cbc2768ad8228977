"""Plot the validation curves of run directories trained outside `xlm compare` (finished or still running), with
its panels: exact match, the star probe, token accuracy and loss against steps, one colour per run.

    python scripts/plot_runs.py "seed 0, 12k=runs/mlm_12k" "seed 1, 20k=runs/mlm_long" --output curves.png

Each run is LABEL=DIR, or DIR alone (labelled by its name).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from xlm.errors import PathNotFoundError, reports_user_errors
from xlm.recipes.compare import plot, val_curve


def labelled_run(spec: str) -> tuple[str, Path]:
    label, sep, path = spec.rpartition("=")
    run = Path(path if sep else spec)
    if not (run / "metrics.jsonl").is_file():
        raise PathNotFoundError(f"{run} has no metrics.jsonl: give the output directory of an `xlm train` run "
                                f"(as LABEL=DIR or DIR)")
    return (label if sep else run.name), run


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="LABEL=DIR or DIR, one per run")
    p.add_argument("--output", type=Path, required=True, help="the .png to write")
    p.add_argument("--title", default="validation curves")
    args = p.parse_args(argv)
    runs = [labelled_run(spec) for spec in args.runs]
    results = [{"arch": label, "curve": val_curve(run)} for label, run in runs]
    args.output.parent.mkdir(parents=True, exist_ok=True)
    plot(results, [label for label, _ in runs], args.output, args.title)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
