"""The compare recipe on a tiny budget: every arch x seed trained and scored, a table with
mean ± std, a plot, and finished runs reused on a rerun, from their directories or from the
report's results.json."""

import json
import shutil

import pytest

from tests.run_lock_holder import another_process_holding_the_lock
from xlm.recipes import compare


def test_compare_two_families_two_seeds(tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--task", "star_easy", "--archs", "arlm_tiny,mlm_tiny", "--budget-steps", "12", "--seeds", "2",
            "--output-dir", str(out), "--eval-every-steps", "6", "--test-limit", "32",
            "task.train_size=64", "task.eval_size=16", "data.batch_size=16"]
    assert compare.main(argv) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert sorted((r["arch"], r["seed"]) for r in results) == [("arlm_tiny", 0), ("arlm_tiny", 1),
                                                               ("mlm_tiny", 0), ("mlm_tiny", 1)]
    assert all(r["steps"] == 12 and r["test"]["num_examples"] == 32 for r in results)
    assert all([p["step"] for p in r["curve"]] == [6, 12] for r in results)
    seeds = {r["seed"]: r["test"]["loss"] for r in results if r["arch"] == "arlm_tiny"}
    assert seeds[0] != seeds[1]  # the seed reaches the runs
    table = (out / "table.md").read_text()
    assert "| arlm_tiny |" in table and "±" in table and "12 steps" in table
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert compare.plot_panels(results) == ["val_exact_match", "val_probe_goal_pred", "val_probe_next",
                                            "val_probe_branch", "val_token_accuracy", "val_loss"]
    assert "probe_next" in table and "probe_goal_pred" in table
    mtime = (out / "runs" / "arlm_tiny_seed0" / "model.safetensors").stat().st_mtime
    assert compare.main(argv) == 0  # a rerun reuses the finished runs
    assert (out / "runs" / "arlm_tiny_seed0" / "model.safetensors").stat().st_mtime == mtime
    assert "| mlm_tiny |" in capsys.readouterr().out
    mixed = [*argv[:argv.index("--seeds")], "--seeds", "arlm_tiny=2,mlm_tiny=1", *argv[argv.index("--seeds") + 2:]]
    assert compare.main(mixed) == 0  # per-arch seed counts tabulate the runs already there
    results = json.loads((out / "results.json").read_text())["results"]
    assert sorted((r["arch"], r["seed"]) for r in results) == [("arlm_tiny", 0), ("arlm_tiny", 1), ("mlm_tiny", 0)]
    rows = {line.split(" | ")[0]: line.rstrip(" |").split(" | ")[-1] for line in
            (out / "table.md").read_text().splitlines() if line.startswith("| ") and "_tiny" in line}
    assert rows == {"| arlm_tiny": "2", "| mlm_tiny": "1"}

    # a run whose directory is gone comes from results.json, when that was written with the same settings
    kept = next(r for r in results if (r["arch"], r["seed"]) == ("arlm_tiny", 1))
    shutil.rmtree(out / "runs" / "arlm_tiny_seed1")
    assert compare.main(mixed) == 0
    assert "arlm_tiny seed 1: " in capsys.readouterr().out and not (out / "runs" / "arlm_tiny_seed1").exists()
    report = json.loads((out / "results.json").read_text())
    assert report["overrides"] == argv[-3:] and report["test_limit"] == 32
    assert next(r for r in report["results"] if (r["arch"], r["seed"]) == ("arlm_tiny", 1)) == kept
    before = (out / "results.json").read_text()
    assert compare.main([*mixed[:-1], "data.batch_size=8"]) == 1  # other settings would overwrite that record
    assert "overrides" in (err := capsys.readouterr().err) and "arlm_tiny seed 1" in err
    assert (out / "results.json").read_text() == before and not (out / "runs" / "arlm_tiny_seed1").exists()

    (out / "results.json").write_text('{"task": "star_easy", "resu')  # a damaged report is refused, not replaced
    assert compare.main(mixed) == 1
    assert "is not valid JSON" in capsys.readouterr().err
    assert (out / "results.json").read_text() == '{"task": "star_easy", "resu'


def test_seeds_per_arch_reads_one_count_or_one_per_arch():
    assert compare.seeds_per_arch("3", ["a", "b"]) == {"a": 3, "b": 3}
    assert compare.seeds_per_arch("a=3, b=1", ["a", "b"]) == {"a": 3, "b": 1}
    for spec, says in [("0", "positive whole number"), ("a=3", "no count for b"), ("a=3,b=1,c=2", "c, which --archs"),
                       ("a=3,b", "'b' is not ARCH=N"), ("a=x,b=1", "seed count of a")]:
        with pytest.raises(ValueError, match=says):
            compare.seeds_per_arch(spec, ["a", "b"])


def test_bad_seed_spec_is_refused_before_any_training(tmp_path, capsys):
    argv = ["--task", "star_easy", "--archs", "arlm_tiny,mlm_tiny", "--budget-steps", "2", "--seeds", "arlm_tiny=1",
            "--output-dir", str(tmp_path / "report")]
    assert compare.main(argv) == 2
    assert "no count for mlm_tiny" in capsys.readouterr().err and not (tmp_path / "report").exists()


def test_plot_panels_are_the_metrics_the_runs_logged():
    text_runs = [{"curve": [{"step": 5, "val_loss": 3.2}]}]  # an LM task logs no prediction metrics
    assert compare.plot_panels(text_runs) == ["val_loss"]


def test_a_run_directory_is_reused_only_with_the_settings_it_was_trained_with(tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--task", "star_easy", "--archs", "arlm_tiny", "--budget-steps", "6", "--output-dir", str(out),
            "--eval-every-steps", "6", "--test-limit", "16", "task.train_size=32", "task.eval_size=8",
            "data.batch_size=8"]
    assert compare.main(argv) == 0
    run = out / "runs" / "arlm_tiny_seed0"
    weights = (run / "model.safetensors").read_bytes()
    assert json.loads((run / "eval_test.json").read_text())["num_examples"] == 16

    rescored = [*argv[:argv.index("--test-limit")], "--test-limit", "8", *argv[argv.index("--test-limit") + 2:]]
    assert compare.main(rescored) == 0  # another test limit: the same weights, scored again
    assert json.loads((run / "eval_test.json").read_text())["num_examples"] == 8
    assert (run / "model.safetensors").read_bytes() == weights

    longer = [*argv[:argv.index("--budget-steps")], "--budget-steps", "12", *argv[argv.index("--budget-steps") + 2:]]
    assert compare.main(longer) == 1  # another budget: refused, not tabulated as if trained with it
    err = capsys.readouterr().err
    assert "trained with other settings" in err and "budget_steps 6 (now 12)" in err and str(run) in err
    assert (run / "model.safetensors").read_bytes() == weights
    (run / compare.RUN_SETTINGS).write_text('{"training": {"task"')  # damaged: refused, the run kept
    assert compare.main(argv) == 1
    assert "is not valid JSON" in capsys.readouterr().err and (run / "model.safetensors").read_bytes() == weights


def test_a_directory_that_is_no_report_is_refused_and_left_as_it_was(tmp_path, capsys):
    """A folder of the user's own files, or a results.json that compare did not write, is never written over."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "table.md").write_text("my table")
    args = ["--task", "star_easy", "--archs", "arlm_tiny", "--budget-steps", "2", "--test-limit", "2"]
    assert compare.main([*args, "--output-dir", str(mine)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --output-dir {mine} holds table.md and is not a report of xlm compare; choose a new or " \
                  f"empty directory"
    (mine / "results.json").write_text('{"my": "numbers"}')
    assert compare.main([*args, "--output-dir", str(mine)]) == 1  # was a KeyError traceback
    assert f"{mine / 'results.json'} is not a results file of xlm compare" in capsys.readouterr().err
    assert sorted(p.name for p in mine.iterdir()) == ["results.json", "table.md"]
    assert (mine / "table.md").read_text() == "my table" and (mine / "results.json").read_text() == '{"my": "numbers"}'


def test_a_second_compare_into_a_report_whose_run_is_training_says_so_in_one_line(tmp_path, capsys):
    """It printed train's lock error and then "training ... failed with exit code 2", after writing the run's
    settings file under the first compare."""
    out = tmp_path / "report"
    run = out / "runs" / "arlm_tiny_seed0"
    run.mkdir(parents=True)
    with another_process_holding_the_lock(run) as holder:
        assert compare.main(["--task", "star_easy", "--archs", "arlm_tiny", "--budget-steps", "2", "--output-dir",
                             str(out), "--test-limit", "2"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and err[0].startswith(f"error: {run} is being trained by pid {holder.pid} on host "), err
    assert "another xlm compare into" in err[0] and "give another --output-dir" in err[0]
    assert sorted(p.name for p in run.iterdir()) == ["run.lock"]  # no settings file written beside the holder's
