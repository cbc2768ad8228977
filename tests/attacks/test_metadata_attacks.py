"""Attacks through a checkpoint's metadata (issue #28, the checkpoint parts of failure 6): a config.json that
asks for far more than its weights hold, a layer count that takes hours to build, sharded indexes that name
themselves or a file outside the model dir; then Hypothesis fuzzing of config.json contents. Each load runs
in a fresh process under a 3 GiB address-space limit where an allocation is what the attack would cause, so
an attempt to allocate shows as a failure instead of taking the machine down."""

import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import xlm
from xlm.errors import XlmUserError

from tests.tiny_run_dir import tiny_run_dir

transformers = pytest.importorskip("transformers")
ADDRESS_SPACE = 3 << 30


def _gpt2_dir(path: Path) -> Path:
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=50, n_positions=32, n_embd=32, n_layer=2, n_head=2)
    transformers.GPT2LMHeadModel(config).save_pretrained(path)
    return path


def _edit_json(file: Path, edit) -> None:
    data = json.loads(file.read_text())
    edit(data)
    file.write_text(json.dumps(data))


def _load_in_a_bounded_process(path: Path) -> subprocess.CompletedProcess[str]:
    """`xlm.load_model(path)` in a fresh process that may map no more than ADDRESS_SPACE bytes."""
    code = textwrap.dedent(f"""
        import resource, sys
        import torch
        import xlm
        from xlm.errors import XlmUserError
        resource.setrlimit(resource.RLIMIT_AS, ({ADDRESS_SPACE}, {ADDRESS_SPACE}))
        try:
            model = xlm.load_model({str(path)!r})
        except XlmUserError as err:
            print("refused:", err)
            sys.exit(2)
        print("loaded")
        model(torch.arange(4)[None])  # a forward too: lazily built tables are sized by the config
        print("ran")
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
    (line,) = [ln for ln in result.stdout.splitlines() if ln.startswith("refused:")]
    return line


@pytest.mark.parametrize("key, value", [("model_dim", 10**9), ("vocab_size", 10**9), ("num_layers", 10**8),
                                        ("ffn_dim", 10**9)])
def test_a_run_dir_config_beyond_its_weights_is_refused_before_allocation(tmp_path, key, value):
    run = tiny_run_dir(tmp_path / "run")
    _edit_json(run / "config.json", lambda c: c["model_config"].__setitem__(key, value))
    if key == "model_dim":  # keep heads dividing it, so only the size is wrong
        _edit_json(run / "config.json", lambda c: c["model_config"].__setitem__("num_heads", 8))
    line = _refused(_load_in_a_bounded_process(run))
    assert "does not fit the model" in line or "num_layers" in line


def test_a_run_dir_that_fits_still_loads_and_runs_in_the_bounded_process(tmp_path):
    """The limit itself is not what refuses the attacks above."""
    result = _load_in_a_bounded_process(tiny_run_dir(tmp_path / "run"))
    assert result.returncode == 0 and "ran" in result.stdout, result.stderr[-2000:]


def test_a_context_length_of_a_trillion_allocates_no_table_of_that_length(tmp_path):
    """max_seq_len holds no weights (rotary positions): the model loads, and its rotary table is built for
    the positions a forward asks for, not for max_seq_len."""
    run = tiny_run_dir(tmp_path / "run")
    _edit_json(run / "config.json", lambda c: c["model_config"].__setitem__("max_seq_len", 10**12))
    result = _load_in_a_bounded_process(run)
    assert result.returncode == 0 and "ran" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("key, value", [("n_embd", 10**9), ("n_layer", 10**8), ("vocab_size", 10**10),
                                        ("n_inner", 10**9)])
def test_an_hf_config_beyond_its_weights_is_refused_before_allocation(tmp_path, key, value):
    hf = _gpt2_dir(tmp_path / "gpt2")
    _edit_json(hf / "config.json", lambda c: c.__setitem__(key, value))
    line = _refused(_load_in_a_bounded_process(hf))
    assert "does not fit" in line or "does not describe these weights" in line


def test_a_float_where_a_size_goes_is_named(tmp_path):
    run = tiny_run_dir(tmp_path / "run")
    _edit_json(run / "config.json", lambda c: c["model_config"].__setitem__("model_dim", 1e9))
    with pytest.raises(XlmUserError, match=r"model_dim must be int, got 1000000000.0 \(float\)"):
        xlm.load_model(run)


def _sharded(path: Path, weight_map: dict[str, str]) -> Path:
    hf = _gpt2_dir(path)
    (hf / "model.safetensors").unlink()
    (hf / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return hf


def test_an_index_naming_itself_is_refused_without_recursion(tmp_path):
    hf = _sharded(tmp_path / "gpt2", {"transformer.wte.weight": "model.safetensors.index.json"})
    with pytest.raises(XlmUserError, match="names another index"):
        xlm.load_model(hf)


@pytest.mark.parametrize("escape", ["../outside/model.safetensors", "sub/../../outside/model.safetensors",
                                    "ABSOLUTE", "link.safetensors"])
def test_an_index_naming_a_file_outside_the_model_dir_is_refused(tmp_path, escape):
    outside = _gpt2_dir(tmp_path / "outside") / "model.safetensors"
    if escape == "ABSOLUTE":
        escape = str(outside)
    hf = _sharded(tmp_path / "gpt2", {})
    os.symlink(outside, hf / "link.safetensors")
    _edit_json(hf / "model.safetensors.index.json", lambda c: c.__setitem__(
        "weight_map", {"transformer.wte.weight": escape}))
    with pytest.raises(XlmUserError, match="shards must sit in their index's dir"):
        xlm.load_model(hf)


def test_a_sharded_checkpoint_inside_its_dir_still_loads(tmp_path):
    """The refusals above are about where shards are, not about sharding."""
    hf = _gpt2_dir(tmp_path / "gpt2")
    state = transformers.GPT2LMHeadModel.from_pretrained(hf).state_dict()
    names = sorted(k for k in state if k != "lm_head.weight")
    half = len(names) // 2
    save_file({k: state[k].contiguous() for k in names[:half]}, hf / "model-00001-of-00002.safetensors")
    save_file({k: state[k].contiguous() for k in names[half:]}, hf / "model-00002-of-00002.safetensors")
    (hf / "model.safetensors").unlink()
    weight_map = {k: f"model-0000{1 if i < half else 2}-of-00002.safetensors" for i, k in enumerate(names)}
    (hf / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    model = xlm.load_model(hf)
    assert torch.equal(model.embed_tokens.weight, state["transformer.wte.weight"])


# -- fuzzing ---------------------------------------------------------------------------------------------

json_values = st.recursive(st.none() | st.booleans() | st.integers(-10, 10**12) | st.floats(allow_nan=True)
                           | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=5), inner, max_size=3), max_leaves=6)
FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                         HealthCheck.too_slow])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    base = tmp_path_factory.mktemp("pristine")
    return {"run": tiny_run_dir(base / "run"), "gpt2": _gpt2_dir(base / "gpt2")}


def _loads_or_refuses(path: Path) -> None:
    """Either a model, or an XlmUserError with a message; nothing else escapes, and nothing large is allocated
    (the process's resident size is checked after each load)."""
    try:
        xlm.load_model(path)
    except XlmUserError as err:
        assert str(err)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 4 << 20  # KiB: under 4 GiB


@FUZZ
@given(key=st.sampled_from(["vocab_size", "model_dim", "num_layers", "num_heads", "num_kv_heads", "ffn_dim",
                            "max_seq_len", "pos_encoding", "rope_base", "rotary_dim", "norm", "norm_eps",
                            "activation", "bias", "attn_bias", "tie_embeddings", "dropout", "init_std",
                            "pad_token_id", "padding_idx", "no_such_field"]), value=json_values)
def test_fuzzed_run_dir_model_configs_load_or_are_refused_in_one_error(tmp_path_factory, pristine, key, value):
    run = tmp_path_factory.mktemp("fuzz") / "run"
    shutil.copytree(pristine["run"], run)
    _edit_json(run / "config.json", lambda c: c["model_config"].__setitem__(key, value))
    _loads_or_refuses(run)


@FUZZ
@given(key=st.sampled_from(["vocab_size", "n_embd", "n_layer", "n_head", "n_inner", "n_positions",
                            "activation_function", "layer_norm_epsilon", "tie_word_embeddings", "model_type",
                            "scale_attn_weights", "architectures"]), value=json_values)
def test_fuzzed_hf_configs_load_or_are_refused_in_one_error(tmp_path_factory, pristine, key, value):
    hf = tmp_path_factory.mktemp("fuzz") / "gpt2"
    shutil.copytree(pristine["gpt2"], hf)
    _edit_json(hf / "config.json", lambda c: c.__setitem__(key, value))
    _loads_or_refuses(hf)


@FUZZ
@given(st.binary(max_size=64) | st.text(max_size=64).map(str.encode)
       | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzzed_config_files_load_or_are_refused_in_one_error(tmp_path_factory, pristine, data):
    for name in ("run", "gpt2"):
        target = tmp_path_factory.mktemp("fuzz") / name
        shutil.copytree(pristine[name], target)
        (target / "config.json").write_bytes(data)
        _loads_or_refuses(target)
