"""Attacks on plugin discovery (issue 28, failure 1: code runs that the user did not ask for), each as an attacker
would try it: an `xlm_models.json` in the current directory that names a complete plugin outside it (`../plug/evil`,
its `__init__.py` leaving a marker file when it runs), reached by `import xlm`, `xlm.load_model`, listings and
`xlm models list`; the same escape through a symbolic link or the legacy `.xlm_models`; and a malformed
`xlm_models.json` that must not stop work needing no plugin. Then Hypothesis fuzzing of the models file: discovery
loads a sound declaration or reports an ExternalModelError (raised or warned), never imports what lies outside the
declaring directory, and never lets another exception escape.

Each command runs in a fresh interpreter (this process has imported everything long ago); the fuzzing runs here."""

import contextlib
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xlm
import xlm.models  # (the core families register now, so the fuzzing's snapshot holds them)
from xlm.data.tokenizers import WordTokenizer
from xlm.plugins import ExternalModelError, ExternalModelWarning, discovery, load_external_models
from xlm.plugins.scaffold import scaffold
from xlm.registry import families, tasks
from xlm.run_dir import write_run_dir

REPO = Path(xlm.__file__).resolve().parents[1]
DISCOVERY_VARS = ("XLM_MODELS_PATH", "XLM_MODELS_PACKAGES", "XLM_MODELS_STRICT")


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python ARGV` in cwd with the xlm under test, no models declared but in cwd, and a card dir of its own."""
    env = {k: v for k, v in os.environ.items() if k not in DISCOVERY_VARS}
    env.update(OMP_NUM_THREADS="1", XLM_USER_ASSET_DIR=str(cwd / ".cards"), HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = _run(["-c", code], cwd)
    assert result.returncode == 0, result.stderr
    return result


def _evil_plugin(where: Path, marker: Path) -> Path:
    """A complete plugin (every part validation asks for, a family registered) whose import appends to `marker`:
    the code an attacker wants run. Its root, where/evil."""
    scaffold("evil", where)
    (where / "xlm_models.json").unlink()
    init = where / "evil" / "evil" / "__init__.py"
    init.write_text(f"open({str(marker)!r}, 'a').write('imported\\n')\n{init.read_text()}")
    return where / "evil"


@pytest.fixture
def attacked(tmp_path):
    """tmp/work, the directory a command starts in, declares {"evil": "../plug/evil"}; the marker is tmp/marker."""
    _evil_plugin(tmp_path / "plug", tmp_path / "marker")
    work = tmp_path / "work"
    work.mkdir()
    (work / "xlm_models.json").write_text(json.dumps({"evil": "../plug/evil"}))
    return work


def _refusal(err: str) -> bool:
    return "'../plug/evil'" in err and "outside" in err


# -- 1: code runs at `import xlm`, `load_model`, `xlm models list` ----------------------------------------------------


def test_import_xlm_imports_no_plugin_declared_in_the_current_directory(attacked):
    _python("import xlm", attacked)
    assert not (attacked.parent / "marker").exists()


def test_load_model_of_core_checkpoints_imports_no_plugin_from_outside(attacked):
    """A core run dir reads its family from its config.json; an HF GPT-2 dir is recognised by asking every family's
    converters (a listing): neither may run the escaping plugin."""
    import transformers

    tokenizer = WordTokenizer([str(i) for i in range(10)])
    model = xlm.create_model("arlm_tiny", vocab_size=tokenizer.vocab_size)
    family = xlm.get_family("arlm")
    write_run_dir(attacked / "run", model=model, family="arlm", arch="arlm_tiny", model_config=model.config,
                  sampler_config=family.sampler_config_class(max_new_tokens=3), tokenizer=tokenizer, task=None,
                  train_config=None, metrics={})
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=32, n_layer=2, n_head=4, bos_token_id=0,
                                     eos_token_id=0)
    transformers.GPT2LMHeadModel(config).save_pretrained(attacked / "gpt2")
    result = _python("import xlm\n"
                     "print(type(xlm.load_model('run')).__name__, type(xlm.load_model('gpt2')).__name__)\n"
                     "print(sorted(xlm.list_archs())[:1], len(xlm.list_cards()) >= 0)", attacked)
    assert not (attacked.parent / "marker").exists(), result.stderr
    assert result.stdout.split()[:2] == ["ArlmModel", "ArlmModel"]
    warned = [line for line in result.stderr.splitlines() if "ExternalModelWarning" in line]
    assert len(warned) == 1 and _refusal(warned[0]), result.stderr  # said once, not per listing


def test_xlm_models_list_refuses_the_escape_in_one_line(attacked):
    result = _run(["-m", "xlm.cli", "models", "list"], attacked)
    assert not (attacked.parent / "marker").exists()
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and _refusal(errors[0]), result.stderr
    assert "Traceback" not in result.stderr


def test_a_lookup_that_needs_a_plugin_reports_the_escape_instead_of_importing(attacked):
    result = _run(["-c", "import xlm\nxlm.get_family('evil')"], attacked)
    assert not (attacked.parent / "marker").exists()
    assert result.returncode == 1 and "ExternalModelValidationError" in result.stderr and _refusal(result.stderr)


def test_the_escape_through_a_symbolic_link_or_the_legacy_file_is_refused_too(attacked):
    plug = attacked.parent / "plug"
    (attacked / "inside").symlink_to(plug / "evil")  # looks like a directory of its own
    (attacked / "xlm_models.json").write_text(json.dumps({"evil": "inside"}))
    linked = _run(["-m", "xlm.cli", "models", "list"], attacked)
    assert linked.returncode == 2 and "'inside'" in linked.stderr and "outside" in linked.stderr, linked.stderr
    (attacked / "xlm_models.json").write_text(json.dumps({"evil": "root"}))  # a root inside, its package a link out
    (attacked / "root" / "configs").mkdir(parents=True)
    (attacked / "root" / "evil").symlink_to(plug / "evil" / "evil")
    package = _run(["-m", "xlm.cli", "models", "list"], attacked)
    assert package.returncode == 2 and "links to" in package.stderr and "outside" in package.stderr, package.stderr
    (attacked / "xlm_models.json").unlink()
    (attacked / ".xlm_models").write_text("../plug/evil\n")  # the legacy file: the name is the path
    legacy = _run(["-m", "xlm.cli", "models", "list"], attacked)
    assert legacy.returncode == 2 and "'../plug/evil' is not a directory name" in legacy.stderr, legacy.stderr
    assert not (attacked.parent / "marker").exists()


def test_an_absolute_path_is_followed_and_the_import_is_announced(attacked):
    """The way to use a model kept elsewhere: its absolute path, written out; the import says what and whence."""
    root = attacked.parent / "plug" / "evil"
    (attacked / "xlm_models.json").write_text(json.dumps({"evil": str(root)}))
    result = _python("import xlm\nprint(xlm.get_family('evil').name)\nxlm.list_archs()", attacked)
    assert result.stdout.split() == ["evil"] and (attacked.parent / "marker").read_text() == "imported\n"
    notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
    assert notes == [f"note: importing model family 'evil': package 'evil' from {root / 'evil'}, declared in "
                     f"{attacked / 'xlm_models.json'}"], result.stderr


# -- 1: a malformed xlm_models.json in the current directory ----------------------------------------------------------


def test_a_malformed_models_file_stops_neither_import_nor_core_training(tmp_path):
    (tmp_path / "xlm_models.json").write_text("{not json")
    _python("import xlm", tmp_path)
    train = _run(["-m", "xlm.cli", "train", "--arch", "arlm_tiny", "--task", "star_easy", "--experiment", "debug",
                  "task.train_size=16", "task.eval_size=4", "trainer.max_steps=2", "trainer.progress_bar=false",
                  "trainer.tensorboard=false", "--output-dir", str(tmp_path / "run")], tmp_path)
    assert train.returncode == 0, train.stderr
    assert (tmp_path / "run" / "model.safetensors").is_file()
    warned = [line for line in train.stderr.splitlines() if line.startswith("warning:")]
    assert len(warned) == 1 and "xlm_models.json is not valid JSON" in warned[0], train.stderr
    for argv in (["train", "--help"], ["cards", "list"]):
        assert _run(["-m", "xlm.cli", *argv], tmp_path).returncode == 0, argv


def test_a_malformed_models_file_is_an_error_where_a_plugin_is_asked_for(tmp_path):
    (tmp_path / "xlm_models.json").write_text("{not json")
    for argv in (["models", "list"], ["train", "--arch", "my_model_tiny", "--task", "star_easy"]):
        result = _run(["-m", "xlm.cli", *argv], tmp_path)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 2 and len(errors) == 1 and "is not valid JSON" in errors[0], result.stderr
        assert not any(line.startswith("warning:") for line in result.stderr.splitlines())  # once, as the error


# -- fuzzing: the models file ---------------------------------------------------------------------------------------

ABSOLUTE_GOOD = "<absolute path of work/good>"  # replaced when the file is written: the test's dir is not known yet
NAMES = st.one_of(st.sampled_from(["good", "evil", "pkglink", "arlm", "", ".", "..", "a/b", "../evil", "x\x00y"]),
                  st.text(max_size=12))
PATHS = st.one_of(st.sampled_from(["good", "./good", "good/", "../work/good", ABSOLUTE_GOOD, "../plug/evil", "link",
                                   "good/../../plug/evil", "pkglink", "loop", "/nonexistent/x", "", ".", "..",
                                   "a\x00b", "a" * 5000, "/".join(["b" * 200] * 30)]),
                  st.text(max_size=30))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)
CONTENTS = st.one_of(  # the bytes of the file
    st.dictionaries(NAMES, PATHS | JSON, max_size=4).map(lambda entries: json.dumps(entries).encode()),
    JSON.map(lambda value: json.dumps(value).encode()),
    st.text(max_size=60).map(str.encode),
    st.binary(max_size=60),  # mostly not UTF-8
    st.integers(min_value=1, max_value=200_000).map(lambda depth: b"[" * depth),
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """base/work: a sound plugin `good`, a link `link` to base/plug/evil, a root `pkglink` whose package links
    there, and a symlink loop `loop`; base/plug/evil: the plugin that must never run (base/marker)."""
    base = tmp_path_factory.mktemp("plugin_fuzz")
    _evil_plugin(base / "plug", base / "marker")
    work = base / "work"
    scaffold("good", work)
    (work / "link").symlink_to(base / "plug" / "evil")
    (work / "pkglink" / "configs").mkdir(parents=True)
    (work / "pkglink" / "pkglink").symlink_to(base / "plug" / "evil" / "evil")
    (work / "loop").symlink_to(work / "loop")
    return base


@contextlib.contextmanager
def _fresh_discovery(base: Path):
    """Discovery as in a new process started in base/work, and afterwards the registries, sys.path and the modules
    as they were (the fuzzing imports `good` again and again)."""
    saved = (dict(families._families), dict(tasks._tasks), dict(discovery._loaded), list(sys.path), set(sys.modules),
             discovery._scanned, os.getcwd())
    discovery._loaded.clear()
    discovery._scanned = None
    os.chdir(base / "work")
    try:
        yield
    finally:
        os.chdir(saved[6])
        families._families.clear()
        families._families.update(saved[0])
        tasks._tasks.clear()
        tasks._tasks.update(saved[1])
        discovery._loaded.clear()
        discovery._loaded.update(saved[2])
        sys.path[:] = saved[3]
        for name in set(sys.modules) - saved[4]:
            if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(base)):
                del sys.modules[name]
        discovery._scanned = saved[5]


def _nothing_ran_from_outside(base: Path) -> None:
    assert not (base / "marker").exists(), "the plugin outside the declaring directory was imported"
    outside = [name for name, module in list(sys.modules.items())
               if str(getattr(module, "__file__", None) or "").startswith(str(base / "plug"))]
    assert not outside, outside
    work = (base / "work").resolve()
    assert all(m.package_dir.resolve().is_relative_to(work) for m in discovery._loaded.values()), discovery._loaded


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(content=CONTENTS, legacy=st.booleans())
def test_fuzzed_models_files_load_or_say_why_and_never_reach_outside(world, content, legacy):
    work = world / "work"
    file = work / (".xlm_models" if legacy else "xlm_models.json")
    other = work / ("xlm_models.json" if legacy else ".xlm_models")
    other.unlink(missing_ok=True)
    file.write_bytes(content.replace(ABSOLUTE_GOOD.encode(), str(work / "good").encode()))
    for ask in ("strict", "lenient", "listing"):
        with _fresh_discovery(world), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                if ask == "strict":
                    loaded = load_external_models(strict=True)
                elif ask == "lenient":
                    loaded = load_external_models(strict=False)
                else:
                    loaded = [a for a in xlm.list_archs() if a.startswith("good_")]  # a listing never raises
            except ExternalModelError as err:
                assert ask == "strict" and str(err), (ask, err)
                loaded = []
            assert all(issubclass(w.category, ExternalModelWarning) for w in caught), [str(w.message) for w in caught]
            assert ask != "strict" or not caught
            assert all(discovery.loaded_models()[name].package == "good" for name in loaded if ask != "listing")
            _nothing_ran_from_outside(world)
    file.unlink()
