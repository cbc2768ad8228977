"""One error hierarchy: every error xlm defines is an XlmError, the user-fixable ones an XlmUserError
that keeps its builtin base, and every command turns a user error into one `error:` line and exit 2."""

import importlib
import inspect
import os
import pkgutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import xlm
from xlm.assets.card import CardError
from xlm.assets.download import ChecksumError, DownloadError
from xlm.data.tasks.star import StarCacheWarning, StarNameError
from xlm.data.tokenizers import UnknownTokenError
from xlm.data.tokenizers import WordTokenizer
from xlm.errors import (CheckpointReadError, ConversionError, InvalidValueError, PathExistsError, PathNotFoundError,
                        UnknownFormatError, XlmError, XlmUserError, XlmWarning, reports_user_errors,
                        user_values)
from xlm.interop.export import ExportError
from xlm.io import DiskFullError
from xlm.models.arlm.predictor import ArlmSamplerConfig
from xlm.plugins.discovery import (ExternalModelConflictError, ExternalModelError, ExternalModelImportError,
                                   ExternalModelNotFoundError, ExternalModelValidationError)
from xlm.plugins.scaffold import ScaffoldError
from xlm.recipes import generate, train
from xlm.recipes.checkpoint import CheckpointError
from xlm.recipes.compare import ComparisonStopped
from xlm.recipes.evaluation import EvaluationStopped
from xlm.recipes.config import ConfigError
from xlm.recipes.trainer import (NonFiniteLossError, StepAbandoned, TrainingDivergedError, TrainingInterrupted,
                                 UnstableTrainingError)
from xlm.registry import DuplicateNameError, UnknownNameError
from xlm.run_dir import RunDirError, write_run_dir

ROOT = Path(__file__).resolve().parent.parent

#: The errors that are not the user's to fix: a run stopped by a signal (a step, an evaluation or a
#: comparison cut short with it), a diverged loss, a checkpoint that turned unreadable mid-run. Each
#: command handles or reports them itself.
INTERNAL = {XlmError, TrainingInterrupted, UnstableTrainingError, NonFiniteLossError, TrainingDivergedError,
            CheckpointError, StepAbandoned, EvaluationStopped, ComparisonStopped}

#: Each user-fixable error and the builtin bases it keeps, so `except ValueError` etc. still catch it.
USER_ERRORS = {
    XlmUserError: (), PathNotFoundError: (FileNotFoundError,), PathExistsError: (FileExistsError,),
    UnknownFormatError: (ValueError,), InvalidValueError: (ValueError,), ConversionError: (ValueError,),
    CheckpointReadError: (ValueError,), CardError: (ValueError,), DownloadError: (OSError,),
    ChecksumError: (ValueError,), RunDirError: (ValueError,), UnknownNameError: (KeyError,),
    DuplicateNameError: (ValueError,), StarNameError: (KeyError, ValueError), UnknownTokenError: (ValueError,),
    ConfigError: (ValueError,), ExportError: (ValueError,), ScaffoldError: (ValueError,),
    ExternalModelError: (), ExternalModelConflictError: (), ExternalModelNotFoundError: (),
    ExternalModelValidationError: (), ExternalModelImportError: (), DiskFullError: (OSError,),
}


def _classes_defined_in_xlm() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(xlm.__path__, "xlm."):
        module = importlib.import_module(info.name)
        found += [c for c in vars(module).values()
                  if inspect.isclass(c) and issubclass(c, BaseException) and c.__module__ == module.__name__]
    return found


DEFINED = _classes_defined_in_xlm()
ERRORS = [c for c in DEFINED if not issubclass(c, Warning)]


def test_the_walk_finds_the_errors_of_every_layer():
    assert set(USER_ERRORS) | INTERNAL <= set(ERRORS)


@pytest.mark.parametrize("cls", ERRORS, ids=lambda c: f"{c.__module__}.{c.__name__}")
def test_every_error_is_an_xlm_error_and_either_the_users_or_listed_as_internal(cls):
    assert issubclass(cls, XlmError), f"{cls.__module__}.{cls.__name__} does not derive from xlm.errors.XlmError"
    assert issubclass(cls, XlmUserError) != (cls in INTERNAL), (
        f"{cls.__name__}: derive it from XlmUserError if a user can fix it, else add it to INTERNAL")


@pytest.mark.parametrize("cls", [c for c in DEFINED if issubclass(c, Warning)], ids=lambda c: c.__name__)
def test_warnings_stay_warnings_and_are_xlm_warnings(cls):
    assert not issubclass(cls, XlmError)
    assert issubclass(cls, XlmWarning), f"{cls.__name__} does not derive from xlm.errors.XlmWarning"


@pytest.mark.parametrize(("cls", "builtins"), USER_ERRORS.items(), ids=[c.__name__ for c in USER_ERRORS])
def test_user_errors_keep_their_builtin_bases(cls, builtins):
    err = cls("what was wrong")
    assert isinstance(err, XlmUserError) and all(isinstance(err, b) for b in builtins)


def test_internal_errors_keep_their_builtin_bases():
    assert issubclass(NonFiniteLossError, FloatingPointError) and issubclass(CheckpointError, RuntimeError)
    assert issubclass(TrainingDivergedError, ArithmeticError)
    assert not issubclass(TrainingInterrupted, XlmUserError)


def test_key_errors_print_their_message_unquoted():
    assert str(UnknownNameError("unknown arch 'x'")) == "unknown arch 'x'"
    assert str(StarNameError("unknown star task 'x'")) == "unknown star task 'x'"


def test_a_user_error_is_one_message_and_exit_2_other_errors_keep_their_traceback(capsys):
    @reports_user_errors
    def main(argv: list[str]) -> int:
        if argv == ["user"]:
            raise InvalidValueError("--seeds: 'x' is not ARCH=N\n  write ARCH=N for every arch")
        if argv == ["bug"]:
            raise KeyError("internal")
        return len(argv)

    assert main(["user"]) == 2
    assert capsys.readouterr().err == "error: --seeds: 'x' is not ARCH=N\n  write ARCH=N for every arch\n"
    assert main(["a", "b", "c"]) == 3 and main.__name__ == "main"
    with pytest.raises(KeyError, match="internal"):
        main(["bug"])


def test_a_command_prints_xlm_warnings_as_one_line_and_leaves_others_as_python_shows_them(capsys):
    @reports_user_errors
    def main(argv: list[str]) -> int:
        warnings.warn("the cache was rebuilt", StarCacheWarning, stacklevel=2)
        warnings.warn("a library's own warning", DeprecationWarning, stacklevel=2)
        return 0

    with pytest.warns(DeprecationWarning, match="a library's own warning") as seen:  # handed on as it was
        assert main([]) == 0
    assert capsys.readouterr().err == "warning: the cache was rebuilt\n"
    assert [w.category for w in seen] == [DeprecationWarning]
    assert issubclass(StarCacheWarning, XlmWarning) and issubclass(XlmWarning, UserWarning)
    assert warnings.showwarning is not None and "one_line" not in warnings.showwarning.__qualname__  # restored


def test_values_a_user_gave_that_a_config_refuses_are_a_user_error():
    with pytest.raises(ValueError) as bare:
        ArlmSamplerConfig(strategy="beam")
    with pytest.raises(InvalidValueError) as refused, user_values():
        ArlmSamplerConfig(strategy="beam")
    assert str(refused.value) == str(bare.value) and refused.value.__cause__ is not None
    with pytest.raises(InvalidValueError, match="unexpected keyword argument 'beams'"), user_values():
        ArlmSamplerConfig(beams=2)
    with pytest.raises(ConfigError), user_values():  # already an xlm error: passed on as it is
        raise ConfigError("data.batch_size must be a positive integer, got 0")


def test_generate_reports_a_sampler_setting_the_run_cannot_take(tmp_path, capsys):
    tokenizer = WordTokenizer([str(i) for i in range(10)])
    model = xlm.create_model("arlm_tiny", vocab_size=tokenizer.vocab_size)
    write_run_dir(tmp_path / "run", model=model, family="arlm", arch="arlm_tiny", model_config=model.config,
                  sampler_config=ArlmSamplerConfig(max_new_tokens=3), tokenizer=tokenizer, task=None,
                  train_config=None, metrics={})
    argv = ["--model", str(tmp_path / "run"), "--prompt", "1 2"]
    assert generate.main([*argv, "sampler.strategy=beam"]) == 2
    assert capsys.readouterr().err == "error: sampler.strategy must be one of ('greedy', 'sample'), got 'beam'\n"
    assert generate.main([*argv, "sampler.max_new_tokens=2"]) == 0 and "-> " in capsys.readouterr().out


def test_a_bad_mdlm_init_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main(["--arch", "mdlm_star_long", "--task", "star_easy", "model.init=gpt2",
                       "--output-dir", str(out)]) == 2
    assert capsys.readouterr().err == "error: init must be one of ('reference', 'normal'), got 'gpt2'\n"
    assert not out.exists()


def test_an_unreachable_hub_dataset_is_one_line_and_makes_no_run_dir(tmp_path):
    """Before: datasets' ConnectionError traceback. Offline mode stands in for a machine without network."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "xlm.cli", "train", "--arch", "arlm_tiny", "--task", "text",
                           "task.dataset=nobody/no_such_corpus", "--output-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert error.startswith("error: task.dataset='nobody/no_such_corpus': Couldn't reach")
    assert "task.data_files" in error
    assert not (tmp_path / "run").exists()


def _command(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Per command: a user mistake (arguments after `python`) and what its message must say."""
    cli = ["-m", "xlm.cli"]
    return {
        "train": ([*cli, "train", "--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug",
                   "task.train_size=4", "trainer.progress_bar=false", "trainer.tensorboard=false",
                   "--output-dir", str(tmp_path / "run")], "data.batch_size=8 is larger than the training set"),
        "eval": ([*cli, "eval", "--model", str(tmp_path / "nowhere")], "nowhere' does not exist"),
        "generate": ([*cli, "generate", "--model", str(tmp_path / "no" / "run"), "--prompt", "1 2"],
                     "does not exist (nor is it a card name)"),
        "convert": ([*cli, "convert", "--from", str(tmp_path / "gone.safetensors"), "--out", str(tmp_path / "out")],
                    "does not exist (nor is it a card name)"),
        "cards show": ([*cli, "cards", "show", "no_such_card"], "no card named 'no_such_card'"),
        "compare": ([*cli, "compare", "--task", "star_easy", "--archs", "arlm_tiny,mlm_tiny", "--budget-steps", "2",
                     "--seeds", "arlm_tiny=1", "--output-dir", str(tmp_path / "report")], "no count for mlm_tiny"),
        "train-tokenizer": ([*cli, "train-tokenizer", "--data-files", str(tmp_path / "none*.txt"), "--vocab-size", "64",
                             "--output", str(tmp_path / "tok.model")], "no file matches"),
        "xlm-scaffold": (["-m", "xlm.plugins.scaffold", "Not-A-Name", "--output-dir", str(tmp_path)],
                         "must match"),
        "scripts/ship_checkpoint.py": ([str(ROOT / "scripts" / "ship_checkpoint.py"), str(tmp_path / "norun"),
                                        "--name", "x", "--command", "y"], "is not a run or export dir"),
        "scripts/plot_runs.py": ([str(ROOT / "scripts" / "plot_runs.py"), str(tmp_path / "norun"), "--output",
                                  str(tmp_path / "c.png")], "has no metrics.jsonl"),
    }


@pytest.mark.parametrize("command", list(_command(Path("."))))
def test_each_command_reports_a_user_mistake_in_one_line_and_exits_2(command, tmp_path):
    argv, says = _command(tmp_path)[command]
    path = [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=600)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and says in errors[0], proc.stderr
