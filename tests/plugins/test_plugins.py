"""External families: the scaffold, each discovery route, training and loading a discovered
family, and every validation error."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import xlm
import xlm.models  # (the core families register now, so the fixture's snapshot holds them)
from xlm.errors import InvalidValueError
from xlm.plugins import discovery, load_external_models
from xlm.plugins.discovery import (ExternalModelConflictError, ExternalModelImportError, ExternalModelNotFoundError,
                                   ExternalModelValidationError, ExternalModelWarning)
from xlm.plugins.scaffold import ScaffoldError, main as scaffold_main, scaffold
from xlm.recipes import train
from xlm.registry import families


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Each test starts in an empty dir with no declared models, and leaves the registries and
    sys.path as it found them and no module imported from its dir (torch's own lazily imported
    submodules stay: importing one twice registers its operators twice)."""
    monkeypatch.chdir(tmp_path)
    for var in ("XLM_MODELS_PATH", "XLM_MODELS_PACKAGES", "XLM_MODELS_STRICT"):
        monkeypatch.delenv(var, raising=False)
    saved = (dict(families._families), dict(discovery._loaded), list(sys.path), set(sys.modules), discovery._scanned)
    yield
    families._families.clear()
    families._families.update(saved[0])
    discovery._loaded.clear()
    discovery._loaded.update(saved[1])
    sys.path[:] = saved[2]
    for name in set(sys.modules) - saved[3]:
        if str(getattr(sys.modules[name], "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]
    discovery._scanned = saved[4]


def _scaffold(name: str, where: Path, **kw) -> Path:
    scaffold(name, where, **kw)
    return where / name


# -- scaffold --------------------------------------------------------------------------------------


def test_scaffold_writes_the_layout_and_declares_the_model(tmp_path, capsys):
    assert scaffold_main(["toy_one", "--dry-run"]) == 0
    planned = [line.split(" ", 2)[2] for line in capsys.readouterr().out.splitlines() if line.startswith("would write")]
    assert not (tmp_path / "toy_one").exists() and not (tmp_path / "xlm_models.json").exists()
    assert scaffold_main(["toy_one"]) == 0
    written = [str(p) for p in sorted(tmp_path.rglob("*")) if p.is_file()]
    assert sorted(planned) == written
    package = tmp_path / "toy_one" / "toy_one"
    assert sorted(p.name for p in package.iterdir()) == sorted(
        ["__init__.py", "types.py", "config.py", "model.py", "loss.py", "predictor.py", "collators.py", "metrics.py",
         "unit.py"])
    assert (tmp_path / "toy_one" / "configs" / "experiment" / "toy_one_debug.yaml").is_file()
    assert (tmp_path / "toy_one" / "pyproject.toml").is_file() and (tmp_path / "toy_one" / "README.md").is_file()
    assert "TODO" in (package / "model.py").read_text()
    assert json.loads((tmp_path / "xlm_models.json").read_text()) == {"toy_one": "toy_one"}


def test_scaffold_refuses_bad_names_and_overwrites(tmp_path, capsys):
    for bad in ("MyModel", "1model", "my-model", "arlm", "class", "json"):
        with pytest.raises(ScaffoldError):
            scaffold(bad, tmp_path)
    scaffold("toy_two", tmp_path)
    model_file = tmp_path / "toy_two" / "toy_two" / "model.py"
    model_file.write_text("# my edits\n")
    assert scaffold_main(["toy_two"]) == 2
    assert "--force" in capsys.readouterr().err and model_file.read_text() == "# my edits\n"
    assert scaffold_main(["toy_two", "--force"]) == 0 and "TODO" in model_file.read_text()
    other = tmp_path / "elsewhere"
    (tmp_path / "xlm_models.json").write_text(json.dumps({"toy_three": "somewhere/else", "keep": "keep"}))
    with pytest.raises(ScaffoldError, match="already maps 'toy_three'"):
        scaffold("toy_three", other, models_file=tmp_path / "xlm_models.json")
    scaffold("toy_four", other, models_file=tmp_path / "xlm_models.json")
    assert json.loads((tmp_path / "xlm_models.json").read_text())["toy_four"] == "elsewhere/toy_four"
    assert json.loads((tmp_path / "xlm_models.json").read_text())["keep"] == "keep"


# -- discovery routes, training, loading --------------------------------------------------------------


def test_directory_route_trains_and_loads_back(tmp_path):
    _scaffold("toy_dir", tmp_path)
    assert load_external_models() == ["toy_dir"]
    assert str(tmp_path / "toy_dir") in sys.path and str(tmp_path) not in sys.path[:1]
    assert xlm.list_archs()["toy_dir_tiny"] == "toy_dir"
    assert "xlm_models.json" in families.get("toy_dir").source
    run = tmp_path / "run"
    assert train.main(["--arch", "toy_dir_tiny", "--task", "star_easy", "--experiment", "toy_dir_debug",
                       "--output-dir", str(run), "trainer.progress_bar=false"]) == 0
    losses = [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10
    model = xlm.load_model(run)
    assert type(model).__module__ == "toy_dir.model"
    assert load_external_models() == []  # idempotent
    with pytest.raises(InvalidValueError, match=r"toy_dir sampler settings: temperature must be float, got 'hot'"):
        xlm.load_generator(run, temperature="hot")  # a plugin's sampler config is type-checked as ours are
    # from another directory (a second terminal, a notebook elsewhere) the plugin is not declared
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XLM_MODELS")}
    evaluate = [sys.executable, "-m", "xlm.recipes.evaluate", "--model", str(run), "--limit", "1"]
    lost = subprocess.run(evaluate, cwd=elsewhere, env=env, capture_output=True, text=True)
    assert lost.returncode == 2 and lost.stderr.strip().splitlines() == [
        f"error: {run} was trained with the model family 'toy_dir' from {tmp_path / 'xlm_models.json'}: "
        f"{tmp_path / 'toy_dir' / 'toy_dir'}, which is not found from here ({elsewhere}): run from the directory "
        f"that declares it, add that directory to $XLM_MODELS_PATH, or pip install its package"], lost.stderr
    found = subprocess.run(evaluate, cwd=elsewhere, env={**env, "XLM_MODELS_PATH": str(tmp_path)},
                           capture_output=True, text=True)
    assert found.returncode == 0, found.stderr


def test_models_path_and_legacy_file_routes(tmp_path, monkeypatch):
    shelf = tmp_path / "shelf"
    _scaffold("toy_env", shelf)
    monkeypatch.setenv("XLM_MODELS_PATH", f"/nonexistent:{shelf}")
    legacy_dir = tmp_path / "xlm-models"
    _scaffold("toy_legacy", legacy_dir, models_file=legacy_dir / ".xlm_models")
    (legacy_dir / ".xlm_models").write_text("# my models\n\ntoy_legacy  # the legacy route\n")
    assert sorted(load_external_models()) == ["toy_env", "toy_legacy"]
    assert {"toy_env_star", "toy_legacy_tiny"} <= set(xlm.list_archs())


def test_package_and_entry_point_routes(tmp_path, monkeypatch):
    # what `pip install -e` does: the project root on the path, and (for the entry point) its metadata
    _scaffold("toy_pkg", tmp_path / "src")
    monkeypatch.syspath_prepend(str(tmp_path / "src" / "toy_pkg"))
    monkeypatch.setenv("XLM_MODELS_PACKAGES", "toy_pkg")
    (tmp_path / "src" / "xlm_models.json").unlink()  # not the directory route
    assert load_external_models() == ["toy_pkg"]
    assert discovery.loaded_models()["toy_pkg"].configs == tmp_path / "src" / "toy_pkg" / "configs"

    _scaffold("toy_ep", tmp_path / "src2")
    (tmp_path / "src2" / "xlm_models.json").unlink()
    site = tmp_path / "site"
    dist = site / "toy_ep-0.1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: toy_ep\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text("[xlm.models]\ntoy_ep = toy_ep\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.syspath_prepend(str(tmp_path / "src2" / "toy_ep"))
    assert load_external_models() == ["toy_ep"]
    assert xlm.list_archs()["toy_ep_tiny"] == "toy_ep"


# -- validation errors -------------------------------------------------------------------------------


def test_duplicate_and_core_names(tmp_path, monkeypatch):
    _scaffold("toy_dup", tmp_path)
    shelf = tmp_path / "shelf"
    _scaffold("toy_dup", shelf)
    monkeypatch.setenv("XLM_MODELS_PATH", str(shelf))
    with pytest.raises(ExternalModelConflictError, match="Duplicate model name: 'toy_dup'") as err:
        load_external_models()
    assert str(tmp_path / "xlm_models.json") in str(err.value) and str(shelf / "xlm_models.json") in str(err.value)
    monkeypatch.delenv("XLM_MODELS_PATH")
    (tmp_path / "xlm_models.json").write_text(json.dumps({"mdlm": "toy_dup"}))
    with pytest.raises(ExternalModelConflictError, match="name of a core xlm family"):
        load_external_models()


def test_package_conflict_missing_parts_and_not_found(tmp_path):
    root = _scaffold("toy_val", tmp_path)
    shutil.copytree(root, tmp_path / "copy")
    (tmp_path / "xlm_models.json").write_text(json.dumps({"toy_a": "toy_val", "toy_b": "copy"}))
    with pytest.raises(ExternalModelConflictError, match="both 'toy_a' and 'toy_b' define package 'toy_val'"):
        load_external_models()
    (tmp_path / "xlm_models.json").write_text(json.dumps({"toy_val": "toy_val"}))
    (root / "toy_val" / "loss.py").unlink()
    shutil.rmtree(root / "configs")
    with pytest.raises(ExternalModelValidationError, match="missing required parts: loss.py, configs/"):
        load_external_models()
    (tmp_path / "xlm_models.json").write_text(json.dumps({"toy_gone": "not/here"}))
    with pytest.raises(ExternalModelNotFoundError, match="'toy_gone' declared in .*not/here is not a directory"):
        load_external_models()
    (tmp_path / "xlm_models.json").write_text("{not json")
    with pytest.raises(ExternalModelValidationError, match="not valid JSON"):
        load_external_models()


def test_import_errors_keep_the_original_and_non_strict_warns(tmp_path, monkeypatch):
    root = _scaffold("toy_broken", tmp_path)
    (root / "toy_broken" / "model.py").write_text("import torch\nraise RuntimeError('my bug on line 2')\n")
    with pytest.raises(ExternalModelImportError, match="RuntimeError: my bug on line 2") as err:
        load_external_models()
    assert isinstance(err.value.__cause__, RuntimeError)
    with pytest.warns(ExternalModelWarning, match="my bug"):
        assert load_external_models(strict=False) == []
    monkeypatch.setenv("XLM_MODELS_STRICT", "0")
    with pytest.warns(ExternalModelWarning):
        load_external_models()
    assert train.main(["--arch", "toy_broken_tiny", "--task", "star_easy"]) == 2  # unknown arch, clearly reported


# -- where a declaration may lead, and when its problems are errors ------------------------------------------------


def test_a_relative_path_stays_inside_the_declaring_directory_an_absolute_one_is_taken_as_written(tmp_path,
                                                                                                   monkeypatch):
    _scaffold("toy_out", tmp_path / "outside")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for where in ("../outside/toy_out", "sub/../../outside/toy_out"):
        (work / "xlm_models.json").write_text(json.dumps({"toy_out": where}))
        with pytest.raises(ExternalModelValidationError) as err:
            load_external_models()
        assert all(s in str(err.value) for s in (repr(where), f"outside {work}", "absolute path")), err.value
    (work / "xlm_models.json").write_text(json.dumps({"toy_out": str(tmp_path / "outside" / "toy_out")}))
    assert load_external_models() == ["toy_out"]


def test_a_bad_entry_skips_only_itself_when_not_strict(tmp_path):
    _scaffold("toy_ok", tmp_path)
    (tmp_path / "xlm_models.json").write_text(json.dumps({"toy_ok": "./toy_ok/../toy_ok", "toy_far": "../far",
                                                          "a/b": "toy_ok", "toy_num": 3}))
    with pytest.warns(ExternalModelWarning) as caught:
        assert load_external_models(strict=False) == ["toy_ok"]
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 3 and any("'../far'" in m for m in messages) and any("'a/b'" in m for m in messages)
    assert any("maps to 3" in m for m in messages)


def test_importing_a_family_declared_in_the_current_directory_says_so_once(tmp_path, monkeypatch, capsys):
    _scaffold("toy_here", tmp_path)
    shelf = tmp_path / "shelf"
    _scaffold("toy_shelf", shelf)
    monkeypatch.setenv("XLM_MODELS_PATH", str(shelf))  # chosen by the user's setting: no note
    assert sorted(load_external_models()) == ["toy_here", "toy_shelf"]
    xlm.get_family("toy_here"), load_external_models()
    assert capsys.readouterr().err.splitlines() == [
        f"note: importing model family 'toy_here': package 'toy_here' from {tmp_path / 'toy_here' / 'toy_here'}, "
        f"declared in {tmp_path / 'xlm_models.json'}"]


def test_a_listing_warns_a_lookup_that_needs_a_plugin_raises_and_a_chdir_scans_again(tmp_path, monkeypatch):
    (tmp_path / "xlm_models.json").write_text('{"toy_x": ')
    discovery._scanned = None
    with pytest.warns(ExternalModelWarning, match="not valid JSON"):
        assert "arlm_tiny" in xlm.list_archs()
    with pytest.raises(ExternalModelValidationError, match="not valid JSON"):
        xlm.get_family("toy_x")
    (tmp_path / "xlm_models.json").unlink()
    _scaffold("toy_x", tmp_path)  # fixed: the next lookup that needs it scans again, the last scan having failed
    assert xlm.get_family("toy_x").name == "toy_x"
    _scaffold("toy_y", tmp_path / "other")
    monkeypatch.chdir(tmp_path / "other")
    assert xlm.list_archs()["toy_y_tiny"] == "toy_y"  # a new directory is scanned by a listing too


def test_the_scaffold_declares_a_model_outside_the_files_directory_by_its_absolute_path(tmp_path, monkeypatch):
    models_file = tmp_path / "work" / "xlm_models.json"
    scaffold("toy_abs", tmp_path / "models", models_file=models_file)
    assert json.loads(models_file.read_text()) == {"toy_abs": str(tmp_path / "models" / "toy_abs")}
    monkeypatch.chdir(tmp_path / "work")
    assert load_external_models() == ["toy_abs"]


def test_models_files_that_are_no_mapping_say_what_they_are(tmp_path):
    file = tmp_path / "xlm_models.json"
    for data, says in ((b'{"a": "\xff"}', "is not UTF-8 text (byte 7, line 1)"), (b"[" * 100_000, "RecursionError"),
                       (b" " * (discovery.MAX_MODELS_FILE_BYTES + 1), "more than a models file holds"),
                       (b'["toy"]', "it holds a list")):
        file.write_bytes(data)
        with pytest.raises(ExternalModelValidationError, match=re.escape(says)):
            load_external_models()
