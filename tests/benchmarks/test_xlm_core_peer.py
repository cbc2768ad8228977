"""benchmarks/xlm_core_peer.py: the peer layout, xlm's trainer step and FLOPs, the inputs and settings xlm-core's
predictors get, reading their outputs back, the tables; the side script imports nothing of ours. With xlm-core's
venv present, a tiny run of both sections against xlm-core itself."""

import ast
import json
import py_compile
from pathlib import Path

import pytest
import torch

import xlm
from benchmarks import xlm_core_peer as peer
from xlm.data.tasks import build_task, task_config
from xlm.interop.export import ExportError
from xlm.run_dir import write_run_dir
from scripts.xlm_core_venv import DEFAULT_VENV, venv_is_ready

ROOT = Path(__file__).resolve().parents[2]
TASK = build_task(task_config("star_easy"))
EXAMPLES = TASK.dataset("test").select(range(6)).select_columns(["prompt_ids", "target_ids"]).to_list()


@pytest.mark.parametrize("family", peer.FAMILIES)
def test_the_peer_layout_is_what_xlm_core_holds(tmp_path, family):
    shipped = xlm.create_model(f"{family}_star", vocab_size=len(TASK.tokenizer))
    with pytest.raises(ExportError, match="attention biases"):
        xlm.export(shipped, tmp_path / "shipped", format="xlm_core")
    torch.manual_seed(0)
    model = xlm.create_model(f"{family}_star", vocab_size=len(TASK.tokenizer), **peer.PEER_LAYOUT,
                             **peer.SHAPES["6x512"]).eval()
    xlm.export(model, tmp_path / "peer", format="xlm_core")
    back = xlm.load_model(tmp_path / "peer", family=family, checkpoint_format="xlm_core").eval()
    ids = torch.tensor([EXAMPLES[0]["prompt_ids"]])
    with torch.no_grad():
        ours, theirs = model(ids), back(ids)
    for a, b in zip(ours if isinstance(ours, tuple) else [ours], theirs if isinstance(theirs, tuple) else [theirs]):
        torch.testing.assert_close(a, b)
    assert back.config.num_layers == 6 and back.config.model_dim == 512


def test_overrides_reach_the_trainer_and_one_step_is_counted(tmp_path):
    assert peer.peer_model_overrides({"num_layers": 2}) == ["model.attn_bias=false", "model.activation=gelu_tanh",
                                                            "model.num_layers=2"]
    trainer = peer.xlm_trainer("ilm", {}, tmp_path / "run", threads=1)
    config = trainer.model.config
    assert (config.attn_bias, config.activation, config.num_layers) == (False, "gelu_tanh", 4)
    assert trainer.config.data.batch_size == peer.BATCH and trainer.config.optim.lr == peer.OPTIMIZER["lr"]
    flops = peer.counted_step_flops(trainer._train_step, layers=4, width=128, seq_len=36, tokens=2000)
    params = sum(p.numel() for p in trainer.model.parameters())
    assert 4 * params * 2000 < flops < 8 * params * 2304 + 12 * 4 * 128 * 36 * 2000  # ~6 N T, attention added
    assert trainer.step == 1


def _unit(family):
    torch.manual_seed(0)
    model = xlm.create_model(f"{family}_star", vocab_size=len(TASK.tokenizer), **peer.PEER_LAYOUT,
                             num_layers=1, model_dim=32, num_heads=2, ffn_dim=64).eval()
    spec = xlm.get_family(family)
    sampler = spec.sampler_config_class(max_new_tokens=9, **peer.SAMPLERS[family])
    return spec.unit_factory(model, TASK.tokenizer, sampler), sampler


def test_xlm_core_gets_xlm_rows_and_its_rule():
    unit, sampler = _unit("arlm")
    batch = unit.collate_predict(EXAMPLES)
    inputs, settings = peer.xlm_core_predictor("arlm", batch, sampler)
    assert torch.equal(inputs["input_ids"], batch["input_ids"]) and settings["top"] == 1
    assert settings["max_length"] == batch["input_ids"].size(1) + 9

    unit, sampler = _unit("mlm")
    batch = unit.collate_predict(EXAMPLES)
    inputs, settings = peer.xlm_core_predictor("mlm", batch, sampler)
    masks = (inputs["input_ids"] == TASK.tokenizer.mask_token_id).sum(1)
    assert masks.tolist() == [settings["max_steps"]] * len(EXAMPLES)  # one position per call
    assert settings["threshold"] is None and settings["confidence"] == "top_prob"

    unit, sampler = _unit("ilm")
    batch = unit.collate_predict(EXAMPLES)
    inputs, settings = peer.xlm_core_predictor("ilm", batch, sampler)
    bos = batch["input_ids"] == TASK.tokenizer.bos_token_id
    assert torch.equal(~inputs["constraint"], bos)  # insertions after [BOS] only
    assert torch.equal(inputs["oracle_length"], batch["attention_mask"].sum(1) + 9)
    assert settings["stopping_threshold"] == sampler.stop_threshold
    with pytest.raises(xlm.errors.InvalidValueError, match="no xlm-core predictor settings for mdlm"):
        peer.xlm_core_predictor("mdlm", batch, sampler)


@pytest.mark.parametrize("family", peer.FAMILIES)
def test_xlm_core_outputs_are_read_as_xlm_reads_its_own(family):
    """xlm's own raw output in the form xlm-core's predictor gives it reads back as xlm's predictions."""
    unit, _ = _unit(family)
    batch = unit.collate_predict(EXAMPLES)
    ids = unit.predict(batch)["ids"]
    if family == "ilm":
        out = unit.predictor.generate(batch["input_ids"], batch["attention_mask"], batch["gap_mask"])
        raw = {"x": out["tokens"], "positions": out["positions"], "attention_mask": out["mask"]}
    elif family == "mlm":
        raw = {"x": unit.predictor.generate(batch["input_ids"], batch["attention_mask"],
                                            block_start=batch["block_start"])[0]}
    else:
        raw = {"x": unit.predictor.generate(batch["input_ids"], batch["attention_mask"])}
    assert peer.outputs_from_xlm_core(family, raw, batch, unit) == ids
    assert peer.rows_of(batch, 2, 4)["input_ids"].size(0) == 2


def test_tables_and_bad_names():
    side = {"s_per_step": 0.5, "tokens": 2304, "seconds": 2.0, "model_calls": 10, "exact_match": 0.5,
            "full_length": 1.0}
    train = [{"family": "ilm", "shape": "star", "xlm": side, "xlm_core": {**side, "s_per_step": 1.0},
              "ratio": 2.0, "xlm_mfu": 0.3, "xlm_core_mfu": 0.15}]
    assert peer.train_table(train).splitlines()[2] == ("| ilm | star | 0.5000 | 1.0000 | 2.00x | 0.300 | 0.150 | "
                                                       "2304, 2304 |")
    sample = [{"family": "mlm", "prompts": 256, "batch_size": 64, "xlm": side, "xlm_core": {**side, "seconds": 6.0},
               "ratio": 3.0, "identical": 0.99}]
    assert peer.sample_table(sample).splitlines()[2] == ("| mlm | 256 (64) | 2.000 | 6.000 | 3.00x | 10, 10 | "
                                                         "0.500, 0.500 | 1.000, 1.000 | 0.990 |")
    sample[0]["parallel"] = {**side, "seconds": 1.0, "model_calls": 4, "ratio": 6.0, "same_as_one_per_call": 0.75,
                             "settings": peer.PARALLEL["mlm"]}
    assert peer.parallel_table(sample).splitlines()[2] == ("| mlm | threshold 0.9 | 1.000 | 6.000 | 6.00x | 4, 10 | "
                                                           "0.500, 0.500 | 0.750 |")
    assert peer.main(["--families", "arlm,gpt"]) == 2
    assert peer.names("ilm,arlm", peer.FAMILIES, "--families") == ["ilm", "arlm"]


def test_the_side_script_compiles_and_imports_nothing_of_ours(tmp_path):
    py_compile.compile(str(peer.SIDE), cfile=str(tmp_path / "side.pyc"), doraise=True)
    modules = {node.module for node in ast.walk(ast.parse(peer.SIDE.read_text()))
               if isinstance(node, ast.ImportFrom) and node.module}
    assert not any(m.split(".")[0] in ("benchmarks", "scripts", "tests") for m in modules)
    ours = [m for m in modules if m.split(".")[0] == "xlm" and (ROOT / Path(*m.split("."))).exists()]
    assert ours == [], f"these are xlm's modules, not xlm-core's: {ours}"  # xlm.harness etc. are xlm-core's


@pytest.mark.skipif(not venv_is_ready(DEFAULT_VENV), reason=f"xlm-core's venv is not at {DEFAULT_VENV} (the "
                                                            "benchmark makes it on first use)")
def test_a_tiny_run_against_xlm_core(tmp_path, capsys):
    """Both sections, tiny: untrained peer-layout models (written as run dirs, so nothing is trained) give the
    same rows under both projects' samplers. MLM's [MASK] embedding is zero, so that [MASK] is never the
    argmax: xlm-core's MLM predictor would write it back (it does not bar [MASK]; a trained model never
    predicts it)."""
    models = tmp_path / "models"
    for family in peer.FAMILIES:
        unit, sampler = _unit(family)
        if family == "mlm":
            with torch.no_grad():
                unit.model.embed_tokens.weight[TASK.tokenizer.mask_token_id] = 0.0
        write_run_dir(models / f"{family}_star_easy", model=unit.model, family=family, arch=f"{family}_star",
                      model_config=unit.model.config, sampler_config=sampler, tokenizer=TASK.tokenizer,
                      task="star_easy", train_config=None, metrics={})
    out = tmp_path / "peer.json"
    assert peer.main(["--sections", "sample", "--prompts", "8", "--batch-size", "4", "--models-dir", str(models),
                      "--work-dir", str(tmp_path / "sample"), "--output", str(out)]) == 0
    for row in json.loads(out.read_text())["sample"]:
        assert row["identical"] == 1.0, row
        if row["family"] in peer.PARALLEL:  # xlm's several-per-call sampler never needs more calls
            assert 0 < row["parallel"]["model_calls"] <= row["xlm"]["model_calls"], row
    assert "| ilm | 8 (4) |" in capsys.readouterr().out
    assert peer.main(["--sections", "train", "--families", "ilm", "--shapes", "star", "--steps", "1", "--warmup", "1",
                      "--work-dir", str(tmp_path / "train"), "--output", str(out)]) == 0
    [row] = json.loads(out.read_text())["train"]
    assert row["xlm"]["s_per_step"] > 0 and row["xlm_core"]["s_per_step"] > 0
    assert 0 < row["xlm_mfu"] < 1 and 0 < row["xlm_core_mfu"] < 1
