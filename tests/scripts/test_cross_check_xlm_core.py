"""scripts/cross_check_xlm_core.py: its comparison and verdicts, and xlm's half of the check run on stand-in xlm-core
checkpoints (tests/xlm_core_fixtures.py); the whole check against xlm-core itself is the slow test."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from xlm.data.tokenizers import WordTokenizer
from xlm.errors import InvalidValueError
from xlm.models.ilm import IlmConfig, create_ilm_model
from xlm.models.ilm.loss import ilm_loss
from xlm.models.mlm import MlmConfig, create_mlm_model
from xlm.models.mlm.loss import mlm_loss

from tests import xlm_core_fixtures
from tests.xlm_core_fixtures import (add_output_layer, ema_entry, parameter_keys, random_tensors,
                                     randomize_for_xlm_core_, rotary_transformer_forward, rotary_transformer_state,
                                     write_hub_export, write_lightning_checkpoint)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "cross_check_xlm_core.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("cross_check_xlm_core", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


cc = _load_script()


def test_differences_are_taken_at_real_tokens_only():
    real = torch.tensor([[True, True, False], [True, True, True]])
    theirs = {"logits": torch.zeros(2, 3, 5), "stop_logits": torch.zeros(2, 2)}
    ours = {"logits": torch.zeros(2, 3, 5), "stop_logits": torch.zeros(2, 2)}
    ours["logits"][0, 2] = 7.0  # a padded column: each side's own business
    ours["logits"][1, 0, 3] = 2e-6
    assert cc.max_abs_difference(ours, theirs, real) == pytest.approx(2e-6)
    ours["stop_logits"][1, 1] = 0.5  # per-row outputs are compared whole
    assert cc.max_abs_difference(ours, theirs, real) == pytest.approx(0.5)
    ours["logits"][1, 2, 0] = float("nan")
    assert cc.max_abs_difference(ours, theirs, real) == float("inf")
    with pytest.raises(ValueError, match="differ in kind"):
        cc.max_abs_difference({"logits": ours["logits"]}, theirs, real)
    with pytest.raises(ValueError, match="shape"):
        cc.max_abs_difference({**ours, "logits": torch.zeros(2, 3, 6)}, theirs, real)


def test_verdicts_tolerance_and_refusals():
    checks = [cc.Check(family="arlm", format="ckpt", direction=cc.DIRECTIONS[0], max_abs_diff=3e-6),
              cc.Check(family="mlm", format="hub", direction=cc.DIRECTIONS[1], max_abs_diff=2e-5, note="family='mlm'"),
              cc.Check(family="mdlm", format="hub", direction=cc.DIRECTIONS[0], refused="its block differs"),
              cc.Check(family="ilm", format="ckpt", direction=cc.DIRECTIONS[0], refused="no stop head"),
              cc.Check(family="arlm", format="hub", direction=cc.DIRECTIONS[1], error="OSError: gone")]
    verdicts = [cc.verdict(c, 1e-5, ["mdlm"]) for c in checks]
    assert verdicts == ["ok", "FAIL", "refused (allowed)", "FAIL", "FAIL"]
    assert cc.failures(checks, 1e-5, ["mdlm"]) == [checks[1], checks[3], checks[4]]
    assert cc.failures(checks[:2], 1e-4, []) == []
    table = cc.format_table(checks, 1e-5, ["mdlm"]).splitlines()
    assert table[0] == "| family | checkpoint or batch | check | max abs diff (tolerance 1e-05) | verdict |"
    assert table[2] == "| arlm | Lightning .ckpt + EMA | xlm-core -> xlm | 3.00e-06 | ok |"
    assert table[3] == "| mlm | hub export | xlm -> xlm-core | 2.00e-05 | FAIL |"
    assert table[4].endswith("| refused: its block differs | refused (allowed) |")
    assert table[6].endswith("| error: OSError: gone | FAIL |")
    assert table[-1] == "- mlm, hub export, xlm -> xlm-core: family='mlm'"
    loss = cc.Check(family="ilm", format="seq2seq", direction=cc.LOSS_CHECK, max_abs_diff=2.4e-7, note="gaps")
    assert cc.format_table([loss], 1e-5, []).splitlines()[2] == "| ilm | seq2seq batch | loss+grad | 2.40e-07 | ok |"


def test_each_familys_output_rows_come_before_its_loss_rows():
    rows = [cc.Check(family="mlm", format="seq2seq", direction="loss+grad, use_num_masked_factor"),
            cc.Check(family="arlm", format="lm", direction=cc.LOSS_CHECK),
            cc.Check(family="mlm", format="hub", direction=cc.DIRECTIONS[1]),
            cc.Check(family="mlm", format="lm", direction=cc.LOSS_CHECK),
            cc.Check(family="mlm", format="ckpt", direction=cc.DIRECTIONS[1]),
            cc.Check(family="arlm", format="ckpt", direction=cc.DIRECTIONS[0])]
    ordered = sorted(rows, key=cc.table_order(["arlm", "mlm"]))
    assert ordered == [rows[5], rows[1], rows[4], rows[2], rows[0], rows[3]]  # loss rows keep the order they came in


V, D, L, H, FF, S, ROTARY = 37, 32, 2, 4, 48, 12, 4
TARGET = "arlm.model_arlm.RotaryTransformerARLMModel"
HUB_CONFIG = {"num_embeddings": V, "d_model": D, "num_layers": L, "nhead": H, "padding_idx": 0, "dim_feedforward": FF,
              "dropout": 0.1, "activation": "relu", "layer_norm_eps": 1e-5, "rotary_emb_dim": ROTARY,
              "max_length": 16, "force_flash_attn": False, "final_layer_without_normalization": False}


def arlm_state(seed):
    r = random_tensors(seed)
    s = rotary_transformer_state(r, vocab=V, dim=D, num_layers=L, ffn_dim=FF, rotary=ROTARY)
    add_output_layer(s, r, vocab=V, dim=D)
    return s


def arlm_forward(s, ids, mask):
    """RotaryTransformerARLMModel as its loss calls it (causal & padding mask, positions cumsum - 1)."""
    allowed = torch.tril(torch.ones(S, S, dtype=torch.bool))[None] & mask[:, None, :]
    x = rotary_transformer_forward(s, ids, allowed=allowed, positions=(mask.long().cumsum(1) - 1) * mask,
                                   num_layers=L, num_heads=H, rotary=ROTARY)
    x = F.layer_norm(x, (D,), s["output_layer.norm_final.weight"], s["output_layer.norm_final.bias"], 1e-5)
    return {"logits": x @ s["output_layer.linear.weight"].T}


def stand_in_work_dir(work):
    """What xlm_core_side.py `make` leaves, for ARLM, from the stand-in writers: a .ckpt whose EMA is not its raw
    weights, a hub export of the EMA weights, inputs and the outputs of the EMA weights."""
    raw, averaged = arlm_state(0), arlm_state(1)
    (work / "arlm").mkdir()
    write_lightning_checkpoint(work / "arlm" / "last.ckpt", raw, ema=ema_entry(averaged),
                               hyper={"model": {**HUB_CONFIG, "_target_": TARGET}})
    write_hub_export(work / "arlm" / "hub", averaged, HUB_CONFIG)
    ids = torch.randint(2, V, (3, S), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(3, S, dtype=torch.bool)
    mask[1, S - 4:] = False
    save_file({"input_ids": ids, "attention_mask": mask}, work / "arlm" / "inputs.safetensors")
    with torch.no_grad():
        for fmt in ("ckpt", "hub"):
            save_file(arlm_forward(averaged, ids, mask), work / "arlm" / f"{fmt}_outputs.safetensors")
    return {"families": {"arlm": {"inputs": "arlm/inputs.safetensors",
                                  "sources": {"ckpt": "arlm/last.ckpt", "hub": "arlm/hub"},
                                  "outputs": {f: f"arlm/{f}_outputs.safetensors" for f in ("ckpt", "hub")}}}}


def test_xlm_half_on_stand_in_checkpoints(tmp_path):
    manifest = stand_in_work_dir(tmp_path)
    imported = cc.check_imports(tmp_path, manifest)
    assert [(c.format, c.direction, c.refused, c.error) for c in imported.checks] == [
        ("ckpt", cc.DIRECTIONS[0], None, None), ("hub", cc.DIRECTIONS[0], None, None)]
    assert all(c.max_abs_diff <= 1e-5 for c in imported.checks)
    ckpt, hub = imported.checks
    assert ckpt.note == hub.note == ""  # a .ckpt names its class; a hub export's constructor arguments tell ARLM
    #                                       from MLM (only the MLM takes mask_idx): neither needs family=
    assert imported.exports == {"arlm": {"ckpt": "arlm/xlm_export_ckpt", "hub": "arlm/xlm_export_hub"}}

    # the way back, with the stand-in forward playing xlm-core loading xlm's export
    inputs = load_file(tmp_path / "arlm" / "inputs.safetensors")
    loaded = {"arlm": {}}
    for fmt, directory in imported.exports["arlm"].items():
        config = json.loads((tmp_path / directory / "config.json").read_text())
        assert {k: v for k, v in config.items() if k != "torch_dtype"} == HUB_CONFIG
        state = load_file(tmp_path / directory / "model.safetensors")
        with torch.no_grad():
            save_file(arlm_forward(state, inputs["input_ids"], inputs["attention_mask"]), tmp_path / f"back_{fmt}")
        loaded["arlm"][fmt] = {"outputs": f"back_{fmt}", "ignored_config_keys": ["torch_dtype"]}
    back = cc.check_exports(tmp_path, manifest, imported, loaded)
    assert [(c.format, c.direction) for c in back] == [("ckpt", cc.DIRECTIONS[1]), ("hub", cc.DIRECTIONS[1])]
    assert cc.failures(imported.checks + back, 1e-5, []) == []

    # outputs a little off are a failure
    reference = load_file(tmp_path / "arlm" / "ckpt_outputs.safetensors")
    reference["logits"][0, 3, 5] += 1e-3
    save_file(reference, tmp_path / "arlm" / "ckpt_outputs.safetensors")
    off = cc.check_imports(tmp_path, manifest).checks[0]
    assert off.max_abs_diff == pytest.approx(1e-3, rel=1e-2) and cc.verdict(off, 1e-5, []) == "FAIL"


def test_a_refusal_on_the_way_in_is_a_refusal_on_the_way_back(tmp_path):
    manifest = stand_in_work_dir(tmp_path)
    del manifest["families"]["arlm"]["sources"]["hub"]
    hyper = {"model": {**HUB_CONFIG, "rotary_emb_dim": 2 * ROTARY, "_target_": TARGET}}
    write_lightning_checkpoint(tmp_path / "arlm" / "last.ckpt", arlm_state(0), hyper=hyper)  # inv_freq disagrees
    imported = cc.check_imports(tmp_path, manifest)
    [refused] = imported.checks
    assert refused.max_abs_diff is None and "rotary_emb.inv_freq" in refused.refused
    [back] = cc.check_exports(tmp_path, manifest, imported, {})
    assert back.direction == cc.DIRECTIONS[1] and back.refused == refused.refused
    assert cc.verdict(back, 1e-5, ["arlm"]) == "refused (allowed)" and cc.verdict(back, 1e-5, []) == "FAIL"


def test_a_venv_that_cannot_be_made_is_one_error_line(tmp_path, capsys):
    taken = tmp_path / "a_file"
    taken.write_text("not a venv")
    assert cc.main(["--venv", str(taken), "--work-dir", str(tmp_path / "work")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: making the venv {taken} failed") and "Traceback" not in err


# -- loss and gradients ---------------------------------------------------------------------------------------------

XLM_CORE_IDS = {"pad": 0, "cls": 1, "mask": 2, "eos": 3, "bos": 4}  # xlm-core's SimpleSpaceTokenizer's


def test_the_settings_that_make_xlms_loss_xlm_cores():
    assert cc.xlm_loss_settings("arlm", {}) == {}
    assert cc.xlm_loss_settings("mlm", {"loss_on_padding": True}) == {"loss_weighting": "none"}
    assert cc.xlm_loss_settings("mlm", {"use_num_masked_factor": True}) == {"loss_weighting": "num_masked_factor"}
    assert cc.xlm_loss_settings("ilm", {"length_loss": "binary_ce"}) == {
        "insertion_gaps": "attended", "stop_loss_weight": 1.0, "stopping_class_weight": None}
    assert cc.xlm_loss_settings("ilm", {"length_loss": "binary_ce", "length_loss_weight": 0.5,
                                        "stopping_class_weight": 0.9}) == {
        "insertion_gaps": "attended", "stop_loss_weight": 0.5, "stopping_class_weight": 0.9}
    with pytest.raises(InvalidValueError, match="loss_on_visible_tokens=True has no xlm setting"):
        cc.xlm_loss_settings("mlm", {"loss_on_visible_tokens": True})
    with pytest.raises(InvalidValueError, match="length_loss='ce' has no xlm setting"):
        cc.xlm_loss_settings("ilm", {"length_loss": "ce"})
    with pytest.raises(InvalidValueError, match=r"arlm loss with \['label_smoothing'\] arguments"):
        cc.xlm_loss_settings("arlm", {"label_smoothing": 0.1})
    with pytest.raises(InvalidValueError, match="mdlm loss with any arguments"):
        cc.xlm_loss_settings("mdlm", {})


def ilm_model(seed=0):
    """An IlmModel configured as one converted from xlm-core: no attention biases, no final norm, [PAD]'s row
    frozen."""
    torch.manual_seed(seed)
    config = IlmConfig(vocab_size=V, model_dim=D, num_layers=L, num_heads=H, ffn_dim=FF, max_seq_len=32,
                       rotary_dim=ROTARY, activation="relu", attn_bias=False, final_norm=False, padding_idx=0)
    return randomize_for_xlm_core_(create_ilm_model(config)).eval()


def test_ilm_batch_is_xlm_cores_column_for_column():
    """ILMSeq2SeqCollator's layout ([PAD]... [CLS] prompt, then [BOS] kept [PAD]...) kept as it is: the drop counts
    become sparse targets at the same columns, a token dropped twice into one gap weighing 2/n; the target's gaps
    start at [BOS]; the stop head reads cls_position. xlm's loss on it is xlm-core's formula on the same network's
    outputs, and the loss on the batch xlm's own collator builds from the same drops."""
    prompts, targets = [[10, 11, 12], [], [13]], [[20, 21, 21, 22], [23, 24], [25]]
    drops = [[1, 2, 3], [], [0]]  # two 21s and the 22 after the 20; nothing (the stop target); the only token
    theirs = xlm_core_fixtures.ilm_seq2seq_batch(prompts, targets, drops, pad=0, cls=1, bos=4, vocab=V, block_size=6)
    ours = cc.xlm_batch("ilm", theirs, XLM_CORE_IDS)
    assert torch.equal(ours["input_ids"], theirs["input_ids"]) and ours["cls_position"].tolist() == [0, 3, 2]
    bos = 4  # the prefix's width: [CLS] and the longest prompt
    assert list(zip(ours["target_rows"].tolist(), ours["target_cols"].tolist(), ours["target_tokens"].tolist())) == [
        (0, bos + 1, 21), (0, bos + 1, 22), (2, bos, 25)]
    assert torch.allclose(ours["target_weights"], torch.tensor([2 / 3, 1 / 3, 1.0]))
    assert ours["num_dropped"].tolist() == [3, 0, 1]
    assert ours["gap_mask"].tolist()[1] == [False] * bos + [True] * 3 + [False] * 3  # [BOS] 23 24, then padding

    model = ilm_model()
    out = model(theirs["input_ids"], attention_mask=theirs["attention_mask"], cls_position=theirs["cls_position"])
    expected = xlm_core_fixtures.ilm_loss(out.token_logits, out.stop_logits, theirs, stopping_class_weight=0.9,
                                          length_loss_weight=0.5)
    settings = {"stop_loss_weight": 0.5, "stopping_class_weight": 0.9, "insertion_gaps": "attended"}
    assert torch.allclose(ilm_loss(model, ours, **settings)["loss"], expected, atol=1e-6)
    at_zero = {k: v for k, v in ours.items() if k != "cls_position"}  # the stop logit read at column 0 instead
    assert not torch.allclose(ilm_loss(model, at_zero, **settings)["loss"], expected, atol=1e-3)

    examples = [{"prompt_ids": p, "input_ids": t} for p, t in zip(prompts, targets)]
    collated = cc.ilm_batch_from_drops(examples, drops, WordTokenizer([str(i) for i in range(V - 7)]), max_len=32)
    assert collated["input_ids"][0].tolist() == [1, 10, 11, 12, 4, 20, 0] and "cls_position" not in collated
    assert torch.allclose(ilm_loss(model, collated, **settings)["loss"], expected, atol=1e-6)


def test_mlm_batch_scores_the_mask_inputs():
    """MLMSeq2SeqTrainCollator's batch (every column attended, [PAD]s maskable): the loss covers the columns whose
    input is [MASK], as MLMLoss's does; with use_num_masked_factor, on one row, where xlm-core's factor is the row's."""
    torch.manual_seed(0)
    config = MlmConfig(vocab_size=V, model_dim=D, num_layers=L, num_heads=H, ffn_dim=FF, max_seq_len=16,
                       rotary_dim=ROTARY, activation="relu", attn_bias=False, tie_embeddings=False, padding_idx=0)
    model = randomize_for_xlm_core_(create_mlm_model(config)).eval()
    prompts, targets, masked = [[10, 11, 12], [13]], [[20, 21], [22, 23, 24]], [[5, 7, 9], [3, 5]]
    theirs = xlm_core_fixtures.mlm_seq2seq_batch(prompts, targets, masked, pad=0, mask=2, bos=4, eos=3, width=10)
    ours = cc.xlm_batch("mlm", theirs, XLM_CORE_IDS)
    assert ours["masked"].nonzero().tolist() == [[0, 5], [0, 7], [0, 9], [1, 3], [1, 5]]
    logits = model(theirs["input_ids"], attention_mask=theirs["attention_mask"])
    assert torch.allclose(mlm_loss(model, ours)["loss"], xlm_core_fixtures.mlm_loss(logits, theirs, mask=2), atol=1e-6)
    one = {k: v[:1] for k, v in ours.items()}
    expected = xlm_core_fixtures.mlm_loss(logits[:1], {k: v[:1] for k, v in theirs.items()}, mask=2,
                                          use_num_masked_factor=True)
    assert torch.allclose(mlm_loss(model, one, weighting="num_masked_factor")["loss"], expected, atol=1e-6)


def test_arlm_batch_keeps_xlm_cores_labels():
    theirs = {"input_ids": torch.tensor([[0, 7, 4, 8, 3]]), "target_ids": torch.tensor([[7, 4, 8, 3, -100]]),
              "attention_mask": torch.tensor([[False, True, True, True, True]])}
    ours = cc.xlm_batch("arlm", theirs, XLM_CORE_IDS)
    assert ours["labels"].tolist() == [[7, 4, 8, 3, -100]] and ours["attention_mask"].dtype == torch.bool
    with pytest.raises(InvalidValueError, match="no batch adapter for mdlm"):
        cc.xlm_batch("mdlm", theirs, XLM_CORE_IDS)


def test_the_notes_say_what_is_left_out():
    base = {"batch": "seq2seq", "arguments": {}, "one_row_per_batch": False, "parts": [{}]}
    [arlm, prompt, padding] = cc.loss_notes("arlm", {**base, "loss_class": "ARLMLoss", "labels_at_padding": 3,
                                                     "as_collated": {}}, {})
    assert arlm == "xlm-core ARLMLoss() against xlm's loss with its defaults"
    assert "cover the prompt" in prompt and padding.startswith("ARLMSeq2SeqCollator labels the last left pad of 3 rows")
    mlm = {**base, "loss_class": "MLMLoss", "arguments": {"use_num_masked_factor": True}, "one_row_per_batch": True,
           "parts": [{}, {}], "whole_batch": "a 2 x 10 batch: RuntimeError: sizes"}
    assert cc.loss_check_name(mlm) == "loss+grad, use_num_masked_factor"
    [what, factor] = cc.loss_notes("mlm", mlm, {"loss_weighting": "num_masked_factor"})
    assert what == ("xlm-core MLMLoss(use_num_masked_factor=True) against xlm's loss with "
                    "loss_weighting='num_masked_factor'")
    assert "(a 2 x 10 batch: RuntimeError: sizes): each of the 2 rows compared as a batch of its own" in factor


def record_arlm_loss(work, name, state, ids, targets):
    """What xlm_core_side.py records for an ARLMLoss case, with the stand-in forward playing xlm-core's network:
    the batch, the mean cross-entropy over the labels and its gradient for every parameter."""
    state = {k: v.clone().requires_grad_(k in parameter_keys(state)) for k, v in state.items()}
    mask = torch.ones_like(ids, dtype=torch.bool)
    loss = F.cross_entropy(arlm_forward(state, ids, mask)["logits"].transpose(1, 2), targets, ignore_index=-100)
    loss.backward()
    save_file({"input_ids": ids, "attention_mask": mask, "target_ids": targets}, work / f"{name}_batch.safetensors")
    save_file({k: v.grad for k, v in state.items() if v.requires_grad}, work / f"{name}_gradients.safetensors")
    return {"batch": f"{name}_batch.safetensors", "gradients": f"{name}_gradients.safetensors", "loss": loss.item()}


def test_loss_rows_on_a_stand_in_case(tmp_path):
    """xlm's half of a loss row: the hub export as xlm loads it, the unit's loss on xlm-core's batch, the
    gradients named as xlm-core names them; a gradient a little off fails, a case xlm cannot match is an error."""
    manifest = stand_in_work_dir(tmp_path)
    ids = torch.randint(5, V, (3, S), generator=torch.Generator().manual_seed(3))
    targets = torch.cat([ids[:, 1:], torch.full((3, 1), -100)], dim=1)  # DefaultARLMCollator's rows fill the block
    part = record_arlm_loss(tmp_path, "arlm/loss0", load_file(tmp_path / "arlm" / "hub" / "model.safetensors"), ids,
                            targets)
    case = {"batch": "lm", "loss_class": "ARLMLoss", "arguments": {}, "one_row_per_batch": False,
            "examples": [], "drops": None, "parts": [part]}
    manifest = {**manifest, "token_ids": XLM_CORE_IDS}
    manifest["families"]["arlm"]["losses"] = [case]
    [row] = cc.check_losses(tmp_path, manifest)
    assert (row.family, row.format, row.direction, row.error) == ("arlm", "lm", "loss+grad", None)
    assert row.max_abs_diff <= 1e-5 and cc.verdict(row, 1e-5, []) == "ok"
    assert row.note.startswith("xlm-core ARLMLoss() against xlm's loss with its defaults; xlm-core's loss ")

    gradients = load_file(tmp_path / part["gradients"])
    gradients["encoder.1.mlp.2.weight"][3, 4] += 1e-3
    save_file(gradients, tmp_path / part["gradients"])
    [off] = cc.check_losses(tmp_path, manifest)
    assert off.max_abs_diff == pytest.approx(1e-3, rel=1e-2) and cc.verdict(off, 1e-5, []) == "FAIL"

    del gradients["encoder.1.mlp.2.weight"]
    save_file(gradients, tmp_path / part["gradients"])
    [missing] = cc.check_losses(tmp_path, manifest)
    assert "differ in kind" in missing.error and cc.verdict(missing, 1e-5, []) == "FAIL"
    case["arguments"] = {"label_smoothing": 0.1}
    [unknown] = cc.check_losses(tmp_path, manifest)
    assert unknown.direction == "loss+grad" and "label_smoothing" in unknown.error


@pytest.mark.slow
def test_against_xlm_core_itself(tmp_path):
    """The whole check: xlm-core's venv (made on first use from the package index, then reused), xlm-core's side
    and xlm's, every family and format in both directions, and the loss and gradients of ARLM (2 batches), MLM (3)
    and ILM (2, each also through xlm's collator)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--work-dir", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "family" not in line]
    assert len(rows) == 25 and sum("| loss+grad" in row for row in rows) == 9
    assert all(row.endswith("| ok |") for row in rows if not row.startswith("| mdlm "))
