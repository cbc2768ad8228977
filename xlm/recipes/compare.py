"""python -m xlm.recipes.compare --task star_easy --archs arlm_star,mlm_star,mdlm_star,ilm_star
(--budget-minutes M | --budget-steps N | --budget-preset) [--seeds 3 | --seeds arlm_star=3,mlm_star=1,...]
[--output-dir reports/star_easy] [key=value ...]

Trains every arch with the same budget (wall-clock minutes of training steps, evaluation
excluded, or a number of steps) for each seed, evaluates each on the whole test split, and
writes into one report directory: `results.json`, `table.md` (mean ± std over seeds) and
`curves.png` (validation exact match, token accuracy and loss against training time and steps,
one colour per family). Finished runs are reused, so an interrupted comparison continues where it
stopped (a run directory trained with another budget, task, overrides or evaluation interval is
refused, and one scored on another --test-limit is scored again), and a comparison run one arch at a
time (in parallel, into the same directory) is tabulated by one last call naming every arch, with
`--seeds` per arch where they differ. A run whose directory is gone (`runs/` holds the weights and
is not what a report keeps) is taken from the `results.json` already there when that file was
written with the same task, budget, overrides and test limit, so seeds can be added to a published
report without retraining the ones it has.

Progress: one bar for the comparison (runs done, time left from the runs trained so far) and one
for the run training (plain lines in a log). Ctrl-C stops the run training after its step, saving a
checkpoint (a second one stops at once), and exits 130; the same command continues from there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from xlm.errors import InvalidValueError, XlmError, reports_user_errors
from xlm.io import replace_file
from xlm.registry import families, get_task

from . import evaluate, train
from .progress import Progress, duration
from .run_lock import live_holder
from .train import COMPARE_SETTINGS as RUN_SETTINGS, refuse_file, refuse_foreign_output_dir

TABLE_METRICS = ("exact_match", "token_accuracy", "path_valid", "branch_correct", "probe_goal_pred", "probe_next",
                 "loss")


class ComparisonStopped(XlmError):
    """A run's training or scoring was stopped by a signal (its exit code, 128 + the signal)."""

    def __init__(self, code: int, what: str) -> None:
        super().__init__(what)
        self.code = code


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xlm compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", required=True)
    p.add_argument("--archs", required=True, help="comma-separated arch names")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--budget-minutes", type=float, help="training time per run (evaluation excluded)")
    budget.add_argument("--budget-steps", type=int, help="optimizer steps per run")
    budget.add_argument("--budget-preset", action="store_true",
                        help="each arch's own trainer.max_steps (its configs/arch preset, e.g. *_star_xlmcore's)")
    p.add_argument("--seeds", default="1", help="seeds per arch: N for every arch, or ARCH=N,... for each")
    p.add_argument("--output-dir", type=Path, default=None, help="default reports/<task>")
    p.add_argument("--eval-every-steps", type=int, default=250)
    p.add_argument("--test-limit", type=int, default=None, help="score only the first N test examples (smoke runs)")
    p.add_argument("overrides", nargs="*", help="recipe overrides for every run, e.g. data.batch_size=32")
    return p.parse_intermixed_args(argv)


def seeds_per_arch(spec: str, archs: Sequence[str]) -> dict[str, int]:
    """`--seeds 3` gives every arch 3 seeds; `--seeds arlm_star=3,mlm_star=1` names each arch's count."""
    def count(text: str, what: str) -> int:
        if not text.strip().isdigit() or int(text) < 1:
            raise InvalidValueError(f"--seeds: {what} must be a positive whole number, got {text!r}")
        return int(text)

    if "=" not in spec:
        return {arch: count(spec, "the seed count") for arch in archs}
    given: dict[str, int] = {}
    for item in spec.split(","):
        arch, sep, n = item.partition("=")
        if not sep:
            raise InvalidValueError(f"--seeds: {item!r} is not ARCH=N (write either one number or ARCH=N for every "
                                    f"arch)")
        arch = arch.strip()
        given[arch] = count(n, f"the seed count of {arch}")
    if missing := [a for a in archs if a not in given]:
        raise InvalidValueError(f"--seeds names no count for {', '.join(missing)}; give ARCH=N for each of "
                                f"{', '.join(archs)}")
    if extra := [a for a in given if a not in archs]:
        raise InvalidValueError(f"--seeds names {', '.join(extra)}, which --archs does not list ({', '.join(archs)})")
    return given


def val_curve(run: Path) -> list[dict[str, float]]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "val"]


def run_dir(out: Path, arch: str, seed: int) -> Path:
    return out / "runs" / f"{arch}_seed{seed}"


def _read_json(path: Path, unreadable: str) -> dict[str, Any] | None:
    """`path`'s JSON, or None where there is no such file; a damaged one is refused with `unreadable`
    (what that means and what to do), since it is what tells reused work from stale."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RuntimeError(f"{path} is not valid JSON ({err}); {unreadable}") from err


def _differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [f"{key} {recorded.get(key)!r} (now {value!r})" for key, value in now.items() if recorded.get(key) != value]


def recorded_results(path: Path, settings: dict[str, Any]) -> dict[tuple[str, int], dict[str, Any]]:
    """The runs a previous `results.json` holds, by (arch, seed), if it was written with `settings`."""
    report = _read_json(path, "it may record runs whose directories are gone, so it is not overwritten: "
                              "fix it, or move it away to start the report afresh")
    if report is None:
        return {}
    if not (isinstance(report, dict) and isinstance(report.get("results"), list)
            and all(isinstance(r, dict) and {"arch", "seed"} <= r.keys() for r in report["results"])):
        raise RuntimeError(f"{path} is not a results file of xlm compare (no list of runs under 'results'), so it "
                           f"is not overwritten: give another --output-dir, or move the file away")
    runs = {(r["arch"], r["seed"]): r for r in report["results"]}
    if not (differ := _differences(report, settings)):
        return runs
    if gone := [f"{arch} seed {seed}" for arch, seed in runs if not run_dir(path.parent, arch, seed).exists()]:
        raise RuntimeError(f"{path} was written with other settings ({'; '.join(differ)}) and records runs whose "
                           f"directories are gone ({', '.join(gone)}); this comparison would overwrite it: "
                           f"give another --output-dir, or move the file away")
    return {}


def _run_settings(run: Path, training: dict[str, Any]) -> dict[str, Any]:
    """What `run` was trained and scored with, as its RUN_SETTINGS file records (empty for a run
    from before they were recorded). A run trained with other settings is refused: its weights would
    stand in the table for a budget or overrides they were not trained with."""
    recorded = _read_json(run / RUN_SETTINGS, f"so what {run} was trained with is unknown: "
                                              f"remove {run} to train it afresh")
    if recorded is None:
        return {}
    if differ := _differences(recorded["training"], training):
        raise RuntimeError(f"{run} was trained with other settings ({'; '.join(differ)}); give another "
                           f"--output-dir, or remove {run} to train it afresh")
    return recorded


def run_one(arch: str, seed: int, args: argparse.Namespace, out: Path,
            recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    run = run_dir(out, arch, seed)
    if recorded is not None and not run.exists():
        print(f"{arch} seed {seed}: {run} is gone; using its results from {out / 'results.json'}")
        return recorded
    training = {"task": args.task, "budget_minutes": args.budget_minutes, "budget_steps": args.budget_steps,
                "eval_every_steps": args.eval_every_steps, "overrides": list(args.overrides),
                **({"budget_preset": True} if args.budget_preset else {})}  # runs recorded before it still match
    settings = _run_settings(run, training)
    settings_file = run / RUN_SETTINGS
    budget = ([f"trainer.max_minutes={args.budget_minutes}", "trainer.max_steps=1000000000"]
              if args.budget_minutes is not None else [] if args.budget_preset
              else [f"trainer.max_steps={args.budget_steps}"])
    if not (run / "model.safetensors").exists():
        if holder := live_holder(run):  # before its settings file is touched; one line, not train's and then ours
            raise RuntimeError(f"{run} is being trained by {holder}, another xlm compare into {out} or a train "
                               f"of it: wait for it to finish (the same command then reuses the run), or give "
                               f"another --output-dir")
        run.mkdir(parents=True, exist_ok=True)
        settings = {"training": training}
        replace_file(settings_file, json.dumps(settings, indent=2))
        code = train.main(["--arch", arch, "--task", args.task, "--output-dir", str(run), f"seed={seed}",
                           f"trainer.eval_every_steps={args.eval_every_steps}", *budget, *args.overrides])
        if code > 128:
            raise ComparisonStopped(code, f"training {arch} (seed {seed}) into {run}")
        if code != 0:
            raise RuntimeError(f"training {arch} (seed {seed}) failed with exit code {code}; see {run}")
    result_file = run / "eval_test.json"
    if not result_file.exists() or settings.get("test_limit", args.test_limit) != args.test_limit:
        limit = ["--limit", str(args.test_limit)] if args.test_limit else []
        code = evaluate.main(["--model", str(run), "--split", "test", "--output", str(result_file), *limit])
        if code > 128:
            raise ComparisonStopped(code, f"scoring {run} on the test split")
        if code != 0:
            raise RuntimeError(f"evaluating {run} failed with exit code {code}")
        replace_file(settings_file, json.dumps({"training": training, "test_limit": args.test_limit}, indent=2))
    summary = json.loads((run / "metrics.json").read_text())
    return {"arch": arch, "seed": seed, "run": str(run), "test": json.loads(result_file.read_text()),
            "steps": summary["step"], "train_seconds": summary["train_seconds"], "curve": val_curve(run)}


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    return f"{mean:.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else f"{mean:.3f}"


def table(results: list[dict[str, Any]], archs: Sequence[str], budget: str) -> str:
    metrics = [m for m in TABLE_METRICS if any(m in r["test"] for r in results)]
    head = ["arch", *metrics, "steps", "train s", "seeds"]
    lines = [f"Test split, {budget} per run; mean ± std over seeds. `loss` is each family's own objective "
             f"(ARLM NLL/token, MLM masked CE, MDLM NELBO/token, ILM per-sequence insertion loss): compare it within "
             f"a family, not across. `train s`: seconds of training steps (on a shared CPU they include contention).",
             "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arch in archs:
        rows = [r for r in results if r["arch"] == arch]
        cells = [_mean_std([r["test"][m] for r in rows if m in r["test"]]) for m in metrics]
        cells += [_mean_std([float(r["steps"]) for r in rows]).split(".")[0],
                  _mean_std([r["train_seconds"] for r in rows]).split(".")[0], str(len(rows))]
        lines.append(f"| {arch} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


PLOT_METRICS = ("val_exact_match", "val_probe_goal_pred", "val_probe_next", "val_probe_branch",
                "val_token_accuracy", "val_loss")


def plot_panels(results: list[dict[str, Any]]) -> list[str]:
    """The validation metrics the runs logged, in PLOT_METRICS order: the star probe (the probability put on
    the node an edge lookup gives) beside exact match, since it rises before exact match does, and token
    accuracy, because on a hard task every family can sit at exact match 0 while its tokens improve."""
    return [m for m in PLOT_METRICS if any(m in p for r in results for p in r["curve"])]


def plot(results: list[dict[str, Any]], archs: Sequence[str], path: Path, title: str) -> None:
    """One row per validation metric, against training time (left) and steps (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics, xs = plot_panels(results), ("train_seconds", "step")
    fig, axes = plt.subplots(len(metrics), len(xs), figsize=(9, 3.0 * len(metrics)), squeeze=False)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for row, metric in zip(axes, metrics):
        for ax, x in zip(row, xs):
            for i, arch in enumerate(archs):
                for j, r in enumerate(r for r in results if r["arch"] == arch):
                    points = [(p[x], p[metric]) for p in r["curve"] if metric in p and x in p]
                    if points:
                        ax.plot(*zip(*points), color=colours[i % len(colours)], marker="o", markersize=3,
                                label=arch if j == 0 else None, alpha=0.85)
            ax.set_xlabel("training seconds" if x == "train_seconds" else "step")
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))  # five-digit steps would overlap
            ax.set_ylabel(metric.removeprefix("val_").replace("_", " ") + " (validation)")
            ax.grid(alpha=0.3)
    labelled = {label: handle for ax in axes.flat for handle, label in zip(*ax.get_legend_handles_labels())}
    axes[0][-1].legend(labelled.values(), labelled.keys(), fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.99))  # keeps the title above the top panels
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _run_all(jobs: list[tuple[str, int]], args: argparse.Namespace, out: Path,
             recorded: dict[tuple[str, int], dict[str, Any]]) -> list[dict[str, Any]]:
    """Every (arch, seed), with a bar over them whose time left follows the runs trained so far."""
    to_train = {job for job in jobs if not (run_dir(out, *job) / "model.safetensors").exists()
                and not (job in recorded and not run_dir(out, *job).exists())}
    overall = Progress(desc="compare", total=len(jobs), enabled=True, every_s=0.0, unit="run")
    took: list[float] = []
    results = []
    try:
        for done, (arch, seed) in enumerate(jobs):
            overall.note(f"compare: run {done + 1}/{len(jobs)}: {arch} seed {seed}"
                         + ("" if (arch, seed) in to_train else " (finished before: reused)"))
            started = time.monotonic()
            results.append(run_one(arch, seed, args, out, recorded.get((arch, seed))))
            if (arch, seed) in to_train:
                took.append(time.monotonic() - started)
            left = len(to_train) - len(took)
            eta = duration(left * sum(took) / len(took)) if took else "after the first run" if left else "0:00"
            overall.update(done + 1, {"last": f"{arch} seed {seed}", "eta": eta})
    finally:
        overall.close()
    return results


def check_numbers(args: argparse.Namespace, archs: Sequence[str]) -> None:
    """The arch list and the numbers, before anything is trained or reused: an arch named twice would be
    one run counted as two seeds."""
    if not archs:
        raise InvalidValueError(f"--archs names no arch, got {args.archs!r}; e.g. --archs arlm_star,mlm_star")
    if twice := sorted({a for a in archs if archs.count(a) > 1}):
        raise InvalidValueError(f"--archs names {', '.join(twice)} more than once; name each arch once and give "
                                f"more seeds with --seeds")
    for option, value, least in (("--budget-steps", args.budget_steps, 1), ("--test-limit", args.test_limit, 1),
                                 ("--eval-every-steps", args.eval_every_steps, 0)):
        if value is not None and value < least:
            raise InvalidValueError(f"{option} must be >= {least}, got {value}")
    if args.budget_minutes is not None and not args.budget_minutes > 0:
        raise InvalidValueError(f"--budget-minutes must be > 0, got {args.budget_minutes:g}")


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    check_numbers(args, archs)
    out = args.output_dir or Path("reports") / args.task
    budget = (f"{args.budget_minutes:g} min" if args.budget_minutes is not None
              else "each arch's preset steps" if args.budget_preset else f"{args.budget_steps} steps")
    seeds = seeds_per_arch(args.seeds, archs)
    get_task(args.task)  # unknown names are one error each, before any run dir is made
    for arch in archs:
        families.get_by_arch(arch)
    refuse_file("--output-dir", out)
    refuse_foreign_output_dir(out, markers=("results.json", "runs"), kind="a report of xlm compare")
    settings = {"task": args.task, "budget": budget, "overrides": list(args.overrides), "test_limit": args.test_limit}
    out.mkdir(parents=True, exist_ok=True)
    jobs = [(arch, seed) for arch in archs for seed in range(seeds[arch])]
    try:
        recorded = recorded_results(out / "results.json", settings)
        results = _run_all(jobs, args, out, recorded)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except ComparisonStopped as stop:
        print(f"compare: stopped while {stop}; the same command continues (finished runs are reused)",
              file=sys.stderr)
        return stop.code
    except KeyboardInterrupt:  # a second Ctrl-C, or one between runs
        print("compare: stopped by Ctrl-C; the same command continues (finished runs are reused)", file=sys.stderr)
        return 130
    replace_file(out / "results.json", json.dumps({**settings, "results": results}, indent=2))
    text = table(results, archs, budget)
    replace_file(out / "table.md", f"# {args.task}\n\n{text}")
    plot(results, archs, out / "curves.png", f"{args.task}, {budget} per run")
    print(text)
    print(f"wrote {out / 'table.md'}, {out / 'curves.png'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
