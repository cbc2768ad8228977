"""`import xlm` is free of side effects: no heavy dependency, no file read, no plugin import until a
public name or a registry lookup needs one; `xlm --help` stays fast. Each check runs in a fresh
interpreter, since this test process has long since imported everything."""

import ast
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import xlm
from xlm.plugins.scaffold import scaffold

REPO = Path(xlm.__file__).resolve().parents[1]
HEAVY = ("torch", "datasets", "pandas", "transformers", "hydra", "omegaconf", "numpy", "safetensors")
DISCOVERY_VARS = ("XLM_MODELS_PATH", "XLM_MODELS_PACKAGES", "XLM_MODELS_STRICT")


def _python(code: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -c code` in cwd, importing the xlm under test, with no models declared but in cwd."""
    environ = {k: v for k, v in os.environ.items() if k not in DISCOVERY_VARS}
    environ.update(env, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=environ, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def _loaded_after(statement: str, cwd: Path, watch: tuple[str, ...]) -> list[str]:
    code = f"import sys\n{statement}\nprint(__import__('json').dumps([m for m in {list(watch)!r} if m in sys.modules]))"
    return json.loads(_python(code, cwd).stdout.splitlines()[-1])


def test_import_xlm_imports_no_heavy_dependency_and_no_family(tmp_path):
    assert _loaded_after("import xlm", tmp_path, (*HEAVY, "xlm.models", "xlm.plugins", "xlm.assets")) == []


def test_the_registry_module_is_light_until_a_lookup(tmp_path):
    assert _loaded_after("from xlm.registry import families, register_family", tmp_path,
                         (*HEAVY, "xlm.models", "xlm.plugins")) == []
    assert _loaded_after("from xlm.registry import families; families.get('arlm')", tmp_path,
                         ("torch", "xlm.models.mdlm", "xlm.plugins")) == ["torch", "xlm.models.mdlm"]


def test_import_xlm_ignores_a_malformed_models_file_until_a_lookup_needs_it(tmp_path):
    (tmp_path / "xlm_models.json").write_text("{not json")
    code = """
import sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
import xlm
assert not [p for p in opened if "xlm_models" in p], opened
assert "xlm.plugins" not in sys.modules
assert xlm.get_family("arlm").name == "arlm"  # a core family: found without discovery
assert "xlm.plugins" not in sys.modules
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert xlm.list_archs()["arlm_tiny"] == "arlm"  # a listing needs no plugin: the problem is a warning
assert [type(w.message).__name__ for w in caught] == ["ExternalModelWarning"], caught
for _ in range(2):  # a lookup that a plugin might answer reports it, and again: not forgotten
    try:
        xlm.get_family("my_model")
    except xlm.plugins.ExternalModelValidationError as err:
        print(err)
    else:
        raise AssertionError("the malformed xlm_models.json went unreported")
"""
    out = _python(code, tmp_path).stdout.splitlines()
    assert len(out) == 2 and all("xlm_models.json is not valid JSON" in line for line in out)
    lenient = _python("import warnings, xlm\nwarnings.simplefilter('error')\n"
                      "try:\n    xlm.get_family('my_model')\nexcept UserWarning as w:\n    print(w)", tmp_path,
                      XLM_MODELS_STRICT="0")
    assert "not valid JSON" in lenient.stdout


def test_plugins_are_discovered_on_the_first_lookup_that_needs_them(tmp_path):
    scaffold("toy_marker", tmp_path)
    marker = tmp_path / "imported.marker"
    init = tmp_path / "toy_marker" / "toy_marker" / "__init__.py"
    init.write_text(f"open({str(marker)!r}, 'a').write('imported\\n')\n{init.read_text()}")
    code = f"""
import pathlib, xlm
marker = pathlib.Path({str(marker)!r})
assert not marker.exists(), "import xlm imported a plugin"
assert xlm.get_family("arlm").name == "arlm" and not marker.exists(), "a core lookup ran discovery"
assert xlm.list_archs()["toy_marker_tiny"] == "toy_marker"
assert xlm.get_family("toy_marker").source.endswith("toy_marker")
xlm.list_families(), xlm.load_external_models()
print(marker.read_text().count("imported"))
"""
    assert _python(code, tmp_path).stdout.split() == ["1"]  # imported once, however often it is looked up
    by_name = _python("import xlm; print(xlm.get_family('toy_marker').name)", tmp_path)  # a miss discovers too
    assert by_name.stdout.split() == ["toy_marker"]


@pytest.mark.parametrize("first", ["from xlm.models.arlm import ArlmConfig",
                                   "from xlm.registry import families; families.get_by_arch('mdlm_tiny')"])
def test_core_families_register_once_whichever_import_comes_first(tmp_path, first):
    code = f"""{first}
import xlm, xlm.models, xlm.models.ilm
from xlm.models.mlm import MlmConfig
from xlm.registry import families
assert xlm.list_families() == ["arlm", "ilm", "mdlm", "mlm"], xlm.list_families()
assert all(families.get(name).source == "core" for name in xlm.list_families())
"""
    _python(code, tmp_path)


def test_xlm_help_is_fast_and_imports_no_torch(tmp_path):
    code = """
import sys, xlm.cli
codes = [xlm.cli.main(["--help"]), xlm.cli.main(["trian"])]
print(codes, [m for m in ("torch", "xlm.models", "xlm.recipes", "xlm.plugins") if m in sys.modules])
"""
    start = time.perf_counter()
    result = _python(code, tmp_path)
    elapsed = time.perf_counter() - start
    assert "usage: xlm COMMAND" in result.stdout and "did you mean 'train'" in result.stderr
    assert result.stdout.splitlines()[-1] == "[0, 2] []"
    assert elapsed < 5, f"xlm --help took {elapsed:.1f}s"


def test_every_public_name_resolves_and_is_listed():
    for name in xlm.__all__:
        assert getattr(xlm, name) is not None
    for name, (module, attribute) in xlm._PUBLIC.items():
        assert getattr(xlm, name) is getattr(sys.modules[module], attribute)
    assert set(xlm.__all__) <= set(dir(xlm)) and "assets" in dir(xlm)  # a submodule imported above
    assert not {"Any", "TYPE_CHECKING", "annotations", "importlib"} & set(dir(xlm))  # __init__'s own imports
    assert xlm.list_cards() == xlm.assets.all_cards() and "arlm" in xlm.list_families()
    with pytest.raises(AttributeError, match="no attribute 'load_modle'; did you mean 'load_model'"):
        _ = xlm.load_modle
    with pytest.raises(AttributeError, match="no attribute 'not_a_thing'"):
        _ = xlm.not_a_thing


def test_type_checkers_see_the_same_names_as_the_lazy_table():
    tree = ast.parse(Path(xlm.__file__).read_text())
    guarded = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    imported = {(node.module, alias.name, alias.asname) for node in guarded.body if isinstance(node, ast.ImportFrom)
                for alias in node.names}
    assert imported == {(module, attribute, name) for name, (module, attribute) in xlm._PUBLIC.items()}
