"""What a researcher sees from the commands: one loading rule (card names, run dirs, `--checkpoint step_N`
of a run finished or not), and each listed mistake as one line naming the fix, exit code 2 (Ctrl-C: 130)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import xlm
from tests.run_lock_holder import another_process_holding_the_lock
from xlm.data.tasks import build_task, prompt_problem, task_config
from xlm.data.tasks.sort import load_sort
from xlm.data.tasks.star import load_star
from xlm.recipes import compare, convert, evaluate, generate, train
from xlm.recipes.model_source import load_for_command
from xlm.errors import PathNotFoundError, UnknownFormatError
from xlm.run_dir import RunDirError

ROOT = Path(__file__).resolve().parents[2]
STAR_PROMPT = load_star("star_easy", "test")[0]["prompt"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished arlm_tiny star_easy run that kept an EMA, with checkpoints at steps 2 and 4."""
    run = tmp_path_factory.mktemp("cmds") / "run"
    assert train.main(["--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug", "--output-dir", str(run),
                       "trainer.progress_bar=false", "trainer.ema_decay=0.5", "trainer.keep_last_checkpoints=0"]) == 0
    return run


@pytest.fixture
def unfinished(trained, tmp_path) -> Path:
    """The run as it stood before its end: checkpoints and history, no final model."""
    run = tmp_path / "unfinished"
    shutil.copytree(trained, run)
    for name in ("model.safetensors", "config.json", "metrics.json"):
        (run / name).unlink()
    return run


def test_an_unfinished_run_says_how_to_resume_it_or_which_checkpoints_to_use(unfinished, capsys):
    for command in (evaluate, generate):
        extra = ["--prompt", STAR_PROMPT] if command is generate else []
        assert command.main(["--model", str(unfinished), *extra]) == 2
        err = _error_line(capsys)
        assert f"{unfinished} is a run that has not finished: resume it with `xlm train --arch arlm_tiny" in err
        assert "--checkpoint step_N (available: step_2, step_4, last)" in err
    assert convert.main(["--from", str(unfinished), "--out", str(unfinished.parent / "out")]) == 2
    assert "has not finished" in _error_line(capsys)
    with pytest.raises(RunDirError, match=f"{unfinished} is a run that has not finished: rerun its train command"):
        xlm.load_model(unfinished)  # from Python too


def test_a_run_still_training_is_said_to_be_so_not_to_be_resumed(unfinished, capsys):
    """A second terminal evaluating a run that a live process is training is told to wait, not given the
    resume command (which would fail on the run's lock)."""
    with another_process_holding_the_lock(unfinished) as holder:
        assert evaluate.main(["--model", str(unfinished)]) == 2
        err = _error_line(capsys)
        assert f"{unfinished} is still training (pid {holder.pid} on host " in err and "resume" not in err
        assert "wait for it to finish, or use --checkpoint step_N (available: step_2, step_4, last)" in err
    assert evaluate.main(["--model", str(unfinished)]) == 2  # its holder gone: resumable again
    assert "has not finished: resume it with" in _error_line(capsys)


def test_cards_add_of_an_unfinished_run_names_the_way_to_export_a_checkpoint(unfinished, tmp_path, monkeypatch,
                                                                              capsys):
    from xlm.assets.cli import main as cards

    monkeypatch.setenv("XLM_USER_ASSET_DIR", str(tmp_path / "cards"))
    assert cards(["add", str(unfinished), "--name", "mine"]) == 2
    err = _error_line(capsys)
    assert "is a run that has not finished" in err and f"xlm convert --from {unfinished} --checkpoint last" in err
    assert not (tmp_path / "cards").exists()


def test_eval_and_generate_load_a_checkpoint_of_an_unfinished_run_with_its_ema_weights(unfinished, capsys):
    assert evaluate.main(["--model", str(unfinished), "--checkpoint", "step_2", "--limit", "4"]) == 0
    out = capsys.readouterr().out
    assert f"{unfinished}, checkpoint step_2 (EMA weights)" in out
    result = json.loads((unfinished / "eval_star_easy_test_step_2_first4.json").read_text())
    assert result["checkpoint"] == "step_2" and result["num_examples"] == 4

    loaded = load_for_command(str(unfinished), checkpoint="last")
    ema = load_file(unfinished / "checkpoints" / "step_000000004" / "ema.safetensors")
    raw = load_file(unfinished / "checkpoints" / "step_000000004" / "model.safetensors")
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in ema.items())
    assert any(not torch.equal(state[k], raw[k]) for k in raw)  # the EMA's weights, not the raw ones
    assert loaded.checkpoint == "step_4" and loaded.run_config["task"] == "star_easy"

    assert generate.main(["--model", str(unfinished), "--checkpoint", "last", "--prompt", STAR_PROMPT]) == 0
    captured = capsys.readouterr()
    assert "->" in captured.out and "checkpoint step_4 (EMA weights)" in captured.err


def test_a_checkpoints_path_is_that_checkpoint_of_its_run_for_every_command(unfinished, tmp_path, capsys):
    """A user pasting `runs/x/checkpoints/step_000000004` was told no converter recognises it."""
    path = unfinished / "checkpoints" / "step_000000004"
    by_path, by_name = load_for_command(str(path)), load_for_command(str(unfinished), checkpoint="step_4")
    assert (by_path.label, by_path.run_dir, by_path.checkpoint) == (by_name.label, unfinished, "step_4")
    assert all(torch.equal(by_path.model.state_dict()[k], v) for k, v in by_name.model.state_dict().items())
    assert evaluate.main(["--model", str(path), "--limit", "2"]) == 0
    assert json.loads((unfinished / "eval_star_easy_test_step_4_first2.json").read_text())["checkpoint"] == "step_4"
    assert convert.main(["--from", str(path), "--out", str(tmp_path / "exported")]) == 0
    assert all(torch.equal(xlm.load_model(tmp_path / "exported").state_dict()[k], v)
               for k, v in by_name.model.state_dict().items())
    capsys.readouterr()
    fine_tune = ["--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug", "trainer.max_steps=1",
                 "--output-dir"]
    assert train.main([*fine_tune, str(tmp_path / "a"), f"init_from={unfinished}"]) == 2
    assert _error_line(capsys) == (f"error: init_from='{unfinished}' is a run that has not finished; start from one "
                                   f"of its checkpoints, e.g. init_from={path} (the newest), or finish it first")
    assert train.main([*fine_tune, str(tmp_path / "b"), f"init_from={path}"]) == 0
    assert f"starting from the weights of {unfinished}, checkpoint step_4 (EMA weights)" in capsys.readouterr().err


def test_a_checkpoint_without_ema_says_so(unfinished):
    (unfinished / "checkpoints" / "step_000000002" / "ema.safetensors").unlink()
    assert load_for_command(str(unfinished), checkpoint="step_2").label.endswith("(weights, no EMA kept)")


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_a_sharded_checkpoint_is_read_without_a_process_group(unfinished):
    import torch.distributed.checkpoint as dcp

    step = unfinished / "checkpoints" / "step_000000004"
    weights = {"model": load_file(step / "model.safetensors"), "ema": load_file(step / "ema.safetensors")}
    dcp.save(weights, checkpoint_id=str(step / "dcp"))
    state = torch.load(step / "trainer_state.pt", weights_only=True)
    torch.save({**state, "sharded": True, "has_ema": True}, step / "trainer_state.pt")
    (step / "model.safetensors").unlink()
    (step / "ema.safetensors").unlink()
    loaded = load_for_command(str(unfinished), checkpoint="step_4")
    assert "EMA weights" in loaded.label
    model = loaded.model.state_dict()
    assert all(torch.equal(model[k], v) for k, v in weights["ema"].items())


def test_checkpoint_names_and_sources_it_cannot_take(unfinished, trained, capsys):
    assert evaluate.main(["--model", str(unfinished), "--checkpoint", "step_3"]) == 2
    assert _error_line(capsys).endswith("has no such checkpoint; available: step_2, step_4, last")
    assert evaluate.main(["--model", str(unfinished), "--checkpoint", "latest"]) == 2
    assert "--checkpoint takes step_N or last, got 'latest'" in _error_line(capsys)
    assert generate.main(["--model", "arlm_star_easy", "--checkpoint", "last", "--prompt", STAR_PROMPT]) == 2
    assert "is a card" in _error_line(capsys)
    no_checkpoints = unfinished.parent / "plain"
    shutil.copytree(trained, no_checkpoints, ignore=shutil.ignore_patterns("checkpoints"))
    assert evaluate.main(["--model", str(no_checkpoints), "--checkpoint", "last"]) == 2
    assert "has no checkpoints" in _error_line(capsys)


def test_convert_writes_a_checkpoint_as_a_model_dir(unfinished, tmp_path, capsys):
    out = tmp_path / "step2"
    assert convert.main(["--from", str(unfinished), "--checkpoint", "step_2", "--out", str(out)]) == 0
    assert "checkpoint step_2" in capsys.readouterr().out
    assert generate.main(["--model", str(out), "--prompt", STAR_PROMPT]) == 0


def test_eval_takes_card_names_as_generate_does(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert evaluate.main(["--model", "arlm_star_easy", "--limit", "3"]) == 0
    assert "card arlm_star_easy" in capsys.readouterr().out
    assert json.loads((tmp_path / "eval_arlm_star_easy_star_easy_test_first3.json").read_text())["num_examples"] == 3
    assert evaluate.main(["--model", "arlm_star_esy"]) == 2
    assert "did you mean arlm_star_easy" in _error_line(capsys)


def test_a_missing_path_does_not_exist(tmp_path, capsys):
    for command, extra in ((evaluate, []), (generate, ["--prompt", "1"]), (convert, None)):
        argv = (["--from", str(tmp_path / "nope"), "--out", str(tmp_path / "o")] if extra is None
                else ["--model", str(tmp_path / "nope"), *extra])
        assert command.main(argv) == 2
        assert f"{tmp_path / 'nope'}' does not exist" in _error_line(capsys)


def test_typos_get_close_matches_from_the_right_list(capsys):
    assert train.main(["--arch", "arlm_tiny", "--experiment", "debgu", "--dump-config"]) == 2
    err = _error_line(capsys)
    assert "unknown experiment 'debgu'; did you mean 'debug'? Known experiments: debug" in err
    assert "star_easy" not in err  # experiments, not tasks
    assert train.main(["--arch", "arlm_tiny", "--task", "star_esy", "--dump-config"]) == 2
    assert "did you mean 'star_easy'" in _error_line(capsys)
    assert train.main(["--arch", "arlm_tni", "--dump-config"]) == 2
    assert "did you mean 'arlm_tiny'" in _error_line(capsys)
    assert evaluate.main(["--model", "arlm_star_easy", "--task", "star_esy"]) == 2
    assert "did you mean 'star_easy'" in _error_line(capsys)
    assert generate.main(["--model", "arlm_star_easy", "--prompt", STAR_PROMPT, "sampler.strateg=greedy"]) == 2
    assert "unknown sampler key 'strateg'; did you mean 'strategy'" in _error_line(capsys)
    assert evaluate.main(["--model", "arlm_star_easy", "--split", "tst"]) == 2
    assert "did you mean 'test'" in _error_line(capsys)


def test_compare_checks_task_and_arch_names_before_making_anything(tmp_path, capsys):
    for task, archs in (("star_esy", "arlm_tiny"), ("star_easy", "arlm_tiny,ilm_tni")):
        assert compare.main(["--task", task, "--archs", archs, "--budget-steps", "2",
                             "--output-dir", str(tmp_path / "report")]) == 2
        assert "did you mean" in _error_line(capsys)
    for extra, says in ((["--archs", "arlm_tiny,arlm_tiny", "--budget-steps", "2"], "names arlm_tiny more than once"),
                        (["--archs", ",", "--budget-steps", "2"], "--archs names no arch"),
                        (["--archs", "arlm_tiny", "--budget-steps", "-3"], "--budget-steps must be >= 1, got -3"),
                        (["--archs", "arlm_tiny", "--budget-minutes", "0"], "--budget-minutes must be > 0, got 0"),
                        (["--archs", "arlm_tiny", "--budget-steps", "2", "--test-limit", "0"],
                         "--test-limit must be >= 1, got 0")):
        assert compare.main(["--task", "star_easy", *extra, "--output-dir", str(tmp_path / "report")]) == 2
        assert says in _error_line(capsys)
    assert not (tmp_path / "report").exists()


def test_an_xlm_export_of_a_run_or_its_checkpoint_keeps_its_arch_and_task(trained, unfinished, tmp_path, capsys):
    """`xlm eval` scores the export as it scores the run (the export dropped both, so eval asked for --task)."""
    for source, extra in ((trained, []), (unfinished, ["--checkpoint", "last"])):
        out = tmp_path / f"export_{source.name}"
        assert convert.main(["--from", str(source), "--out", str(out), *extra]) == 0
        config = json.loads((out / "config.json").read_text())
        assert (config["arch"], config["task"]) == ("arlm_tiny", "star_easy")
        assert config["train_config"]["task"] == json.loads((trained / "config.json").read_text())["train_config"][
            "task"]
        assert evaluate.main(["--model", str(out), "--limit", "2"]) == 0
    capsys.readouterr()


def test_training_into_a_directory_of_other_files_is_refused_and_changes_nothing(trained, tmp_path, capsys):
    """An export dir (whose model a run would overwrite) or a folder of the user's own files is no run dir."""
    export_dir = tmp_path / "exported"
    assert convert.main(["--from", str(trained), "--out", str(export_dir)]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "data.csv").write_text("a,b\n")
    capsys.readouterr()
    for target, listing in ((export_dir, "config.json, metrics.json, model.safetensors"), (mine, "data.csv")):
        before = {p.name: p.read_bytes() for p in target.iterdir()}
        assert train.main(["--arch", "arlm_tiny", "--experiment", "debug", "--output-dir", str(target)]) == 2
        assert f"--output-dir {target} holds {listing} and is not a training run's directory" in _error_line(capsys)
        assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert train.main(["--arch", "arlm_tiny", "--experiment", "debug", "--dump-config",
                       "--output-dir", str(mine)]) == 0  # writes nothing, so it may name any directory


def test_the_listed_mistakes_are_one_line_each(tmp_path, capsys):
    assert generate.main(["--model", "arlm_star_easy", "--prompt", STAR_PROMPT, "--num-samples", "0"]) == 2
    assert "--num-samples must be at least 1, got 0" in _error_line(capsys)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert train.main(["--arch", "arlm_tiny", "--experiment", "debug", "--output-dir", str(a_file)]) == 2
    assert f"--output-dir {a_file} is a file" in _error_line(capsys)
    assert compare.main(["--task", "star_easy", "--archs", "arlm_tiny", "--budget-steps", "2",
                         "--output-dir", str(a_file)]) == 2
    assert "is a file" in _error_line(capsys)
    assert train.main(["--arch", "arlm_tiny", "--task", "text", f"task.data_files={a_file}", "--experiment", "debug",
                       "--output-dir", str(tmp_path / "r")]) == 2
    assert f"task.data_files: {a_file} is empty" in _error_line(capsys)
    assert train.main(["--arch", "arlm_tiny", "--task", "text", f"task.data_files={tmp_path / 'no.txt'}",
                       "--output-dir", str(tmp_path / "r")]) == 2
    assert "no file matches" in _error_line(capsys)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"\n{oops')
    assert train.main(["--arch", "arlm_tiny", "--task", "text", f"task.data_files={broken}", "--experiment", "debug",
                       "--output-dir", str(tmp_path / "r")]) == 2
    assert f"cannot read {broken} as json" in _error_line(capsys)
    assert evaluate.main(["--model", "arlm_star_easy", "--output", str(tmp_path)]) == 2
    assert "is a directory" in _error_line(capsys)
    for option in ("--limit", "--batch-size", "--loss-samples"):
        assert evaluate.main(["--model", "arlm_star_easy", option, "0"]) == 2
        assert f"{option} must be >= 1, got 0" in _error_line(capsys)
    for family in ("arlm", "mlm", "mdlm", "ilm"):
        assert generate.main(["--model", f"{family}_star_easy", "--prompt", STAR_PROMPT, "sampler.top_p=abc"]) == 2
        assert f"{family} sampler settings: top_p must be float or None, got 'abc' (str)" in _error_line(capsys)
        for bad, says in (("top_p=2", "top_p must be in (0, 1]"), ("temperature=-1", "temperature must be >= 0"),
                          ("top_k=-3", "top_k must be >= 1")):  # ARLM's greedy default took them silently
            assert generate.main(["--model", f"{family}_star_easy", "--prompt", STAR_PROMPT, f"sampler.{bad}"]) == 2
            assert f"sampler.{says}" in _error_line(capsys)
    for family in ("mlm", "mdlm", "ilm"):  # ARLM stops at its context instead
        assert generate.main(["--model", f"{family}_star_easy", "--prompt", STAR_PROMPT, "--max-new-tokens",
                              "100000"]) == 2
        err = _error_line(capsys)
        assert err.startswith("error: prompt 1: a ") and "exceeds the model context of 256" in err, err
    for command, extra in ((generate, ["--prompt", STAR_PROMPT]), (evaluate, [])):
        assert command.main(["--model", "arlm_star_easy", "--device", "tpu", *extra]) == 2
        assert "--device='tpu' is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'" in _error_line(capsys)
        if not torch.cuda.is_available():
            assert command.main(["--model", "arlm_star_easy", "--device", "cuda", *extra]) == 2
            assert "--device='cuda' but CUDA is not available here" in _error_line(capsys)
    latin1 = tmp_path / "prompts.txt"
    latin1.write_bytes(STAR_PROMPT.encode() + b"\n\xe9\n")
    for path, says in ((latin1, f"--prompts-file {latin1}, line 2: not UTF-8 (byte 0xe9); prompt files must be"),
                       (tmp_path, f"--prompts-file {tmp_path} is a directory")):
        assert generate.main(["--model", "arlm_star_easy", "--prompts-file", str(path)]) == 2
        assert says in _error_line(capsys)
    assert not list(tmp_path.glob("eval_*"))  # nothing written by a refused command


def test_a_limited_eval_keeps_the_full_splits_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    full = tmp_path / "eval_arlm_star_easy_star_easy_validation.json"
    assert evaluate.main(["--model", "arlm_star_easy", "--split", "validation"]) == 0
    before = full.read_text()
    assert json.loads(before)["num_examples"] == 100
    assert evaluate.main(["--model", "arlm_star_easy", "--split", "validation", "--limit", "5"]) == 0
    assert full.read_text() == before
    assert json.loads((tmp_path / "eval_arlm_star_easy_star_easy_validation_first5.json").read_text())[
        "num_examples"] == 5
    predictions = tmp_path / "new" / "dir" / "p.jsonl"  # made, as --output's folder is
    assert evaluate.main(["--model", "arlm_star_easy", "--split", "validation", "--limit", "5", "--predictions",
                          str(predictions)]) == 0
    assert len(predictions.read_text().splitlines()) == 5
    assert evaluate.main(["--model", "arlm_star_easy", "--split", "validation", "--limit", "9999"]) == 0
    assert not list(tmp_path.glob("*_first9999.json"))  # a limit past the end scores the whole split
    assert evaluate.main(["--model", "arlm_star_easy", "--split", "validation", "sampler.strategy=sample",
                          "sampler.temperature=0.5"]) == 0  # other settings: another file, which says so
    assert full.read_text() == before and json.loads(before)["sampler"]["strategy"] == "greedy"
    sampled = json.loads((tmp_path / "eval_arlm_star_easy_star_easy_validation_strategy=sample_temperature=0.5.json"
                          ).read_text())
    assert sampled["sampler_overrides"] == {"strategy": "sample", "temperature": 0.5} and sampled["seed"] == 0
    capsys.readouterr()


def test_generate_warns_once_about_a_prompt_unlike_the_tasks(capsys):
    assert generate.main(["--model", "arlm_star_easy", "--prompt", "3 8 8 14 14 5 3 5", "--prompt", STAR_PROMPT]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["warning: prompt 1: it has 8 words, but star_easy prompts have 26 words (12 edges as node pairs, "
                   "then the source and the goal)"]


def test_prompt_problems_flag_only_prompts_unlike_the_tasks():
    for task in ("star_easy", "star_medium", "star_hard"):
        assert not [p for p in load_star(task, "test")["prompt"][:300] if prompt_problem(task, p)]
    assert not [p for p in load_sort("sort", "test")["prompt"][:300] if prompt_problem("sort", p)]
    words = STAR_PROMPT.split()
    assert "source" in prompt_problem("star_easy", " ".join(words[:-2] + [words[-1], words[-1]]))  # a leaf
    assert "goal" in prompt_problem("star_easy", " ".join(words[:-1] + [words[-2]]))
    assert "25 is no node id" in prompt_problem("star_easy", " ".join(words[:-1] + ["25"]))
    assert "an even number of words from 14 to 32" in prompt_problem("star_medium", "1 2 3")
    assert "40 distinct numbers" in prompt_problem("sort", "1 2 3")
    assert prompt_problem("sort", " ".join(["7"] * 40)).startswith("its words are not distinct")
    assert prompt_problem("text", "anything") is None


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_ctrl_c_stops_a_command_with_one_line_and_130(command, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text((STAR_PROMPT + "\n") * 2000)
    args = (["--prompts-file", str(prompts)] if command == "generate"
            else ["--batch-size", "1", "--output", str(tmp_path / "eval.json")])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # as from a terminal: a suite run in the background of a script (`bash .ci/run &`) ignores SIGINT, children
    # inherit that, and Python then installs no KeyboardInterrupt (the shell convention for background jobs)
    proc = subprocess.Popen([sys.executable, "-m", "xlm.cli", command, "--model", "arlm_star_easy", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        if command == "generate":
            assert "->" in proc.stdout.readline() + proc.stdout.readline()  # generating now
        else:
            assert proc.stderr.readline().startswith("scoring ")  # scoring now
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].split("\r")[-1] == "interrupted", err


def test_a_text_run_with_relative_data_paths_evaluates_from_another_directory(tmp_path, monkeypatch, capsys):
    """Trained in one directory with task.data_files=corpus.txt, scored from another: the relative path is read
    where the run was started (run.json's cwd), with a note; it said "no file matches 'corpus.txt'"."""
    home, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    (home / "corpus.txt").write_text("\n".join(f"the {w} sat on the mat {w}" for w in ("cat", "dog", "owl") * 40))
    monkeypatch.chdir(home)
    assert train.main(["--arch", "arlm_tiny", "--task", "text", "task.data_files=corpus.txt",
                       "task.tokenizer_vocab_size=24", "task.block_size=16", "--output-dir", "run",
                       "trainer.max_steps=4", "trainer.checkpoint_every_steps=2", "trainer.progress_bar=false"]) == 0
    shutil.copytree(home / "run", home / "unfinished")
    for name in ("model.safetensors", "config.json", "metrics.json"):
        (home / "unfinished" / name).unlink()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    for extra in ([str(home / "run")], [str(home / "unfinished"), "--checkpoint", "last"]):
        assert evaluate.main(["--model", *extra, "--limit", "2"]) == 0
        assert (f"note: task.data_files 'corpus.txt' is not found here; reading it from where the run was started: "
                f"{home / 'corpus.txt'}") in capsys.readouterr().err


def test_eval_scores_a_text_model_on_another_corpus_with_its_own_tokenizer(tmp_path, monkeypatch, capsys):
    """`xlm eval --model RUN task.data_files=held_out.txt`: it said "expected sampler.KEY=VALUE"; now the other
    corpus is read with the model's tokens (not a tokenizer trained on it), into a file of its own."""
    monkeypatch.chdir(tmp_path)
    Path("a.txt").write_text("\n".join(f"the {w} sat on the mat {w}" for w in ("cat", "dog", "owl") * 40))
    Path("b.txt").write_text("\n".join(f"a {w} ran under the rug" for w in ("cat", "dog", "hen", "owl") * 30))
    assert train.main(["--arch", "arlm_tiny", "--task", "text", "task.data_files=a.txt", "task.tokenizer_vocab_size=24",
                       "task.block_size=16", "--output-dir", "run", "trainer.max_steps=4",
                       "trainer.progress_bar=false"]) == 0
    assert evaluate.main(["--model", "run", "--split", "train"]) == 0
    own = json.loads(Path("run/eval_text_train.json").read_text())
    assert evaluate.main(["--model", "run", "--split", "train", "task.data_files=b.txt"]) == 0
    other = json.loads(Path("run/eval_text_train_data_files=b.txt.json").read_text())
    assert Path("run/eval_text_train.json").read_text() == json.dumps(own, indent=2) + "\n"  # not replaced
    assert other["task_overrides"] == ["task.data_files=b.txt"] and other["loss"] != own["loss"]
    run_tokenizer = xlm.load_tokenizer("run")
    rows = build_task(task_config("text", data_files="b.txt", tokenizer="run", block_size=16)).dataset("train")
    assert other["num_examples"] == len(rows) and run_tokenizer.decode(rows[0]["input_ids"]).startswith("a ")
    capsys.readouterr()
    for item, says in (("task.data_file=b.txt", "unknown config key 'task.data_file' (from the command line "
                                                "(task.data_file=b.txt)); did you mean task.data_files"),
                       ("task.block_size=abc", "bad value for config key 'task.block_size'"),
                       ("task.name=star_easy", "task.name='star_easy' is not the task being scored, 'text'"),
                       ("model.dim=3", "expected sampler.KEY=VALUE or task.KEY=VALUE, got 'model.dim=3'")):
        assert evaluate.main(["--model", "run", item]) == 2
        assert says in _error_line(capsys)
    # the same tokens for a second model: task.tokenizer names the first one's run dir
    assert train.main(["--arch", "mlm_tiny", "--task", "text", "task.data_files=b.txt", "task.tokenizer=run",
                       "task.block_size=16", "--output-dir", "second", "trainer.max_steps=2",
                       "trainer.progress_bar=false"]) == 0
    assert xlm.load_tokenizer("second").spec() == run_tokenizer.spec()
    Path("bare").mkdir()
    Path("bare/config.json").write_text('{"family": "arlm"}')
    with pytest.raises(UnknownFormatError, match="task.tokenizer='bare': its config.json records no xlm tokenizer"):
        build_task(task_config("text", data_files="b.txt", tokenizer="bare"))
    shutil.copytree("run", "unfinished")
    Path("unfinished/config.json").unlink()
    with pytest.raises(UnknownFormatError, match="task.tokenizer='unfinished' is an xlm run that has not finished"):
        build_task(task_config("text", data_files="b.txt", tokenizer="unfinished"))
    with pytest.raises(PathNotFoundError, match="task.tokenizer='runs/typo' does not exist; give a SentencePiece"):
        build_task(task_config("text", data_files="b.txt", tokenizer="runs/typo"))


@pytest.mark.parametrize("card", ["mlm_star_easy", "mdlm_star_easy"])
def test_a_block_filling_model_is_scored_on_a_task_with_longer_targets(card, tmp_path, monkeypatch, capsys):
    """`xlm eval --model mdlm_star_easy --task star_medium` was a traceback (its block held star_easy's targets);
    MLM's cut every longer target to its block and scored the cut one."""
    monkeypatch.chdir(tmp_path)
    longest = build_task(task_config("star_medium")).max_new_tokens
    assert load_for_command(card).sampler_config.max_new_tokens < longest
    assert evaluate.main(["--model", card, "--task", "star_medium", "--limit", "8", "--output", "e.json"]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["sampler"]["max_new_tokens"] == longest and 0 <= result["exact_match"] <= 1
    capsys.readouterr()
    assert evaluate.main(["--model", card, "--task", "star_medium", "--limit", "8", "sampler.max_new_tokens=5"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the line that says what is scored
    assert re.fullmatch(r"error: a target of (\d+) tokens plus \[EOS\] does not fit the generated block of "
                        r"sampler.max_new_tokens=5; set sampler.max_new_tokens=(\d+) or more", last), last
