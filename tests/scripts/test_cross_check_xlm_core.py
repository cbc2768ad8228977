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

from tests.xlm_core_fixtures import (add_output_layer, ema_entry, random_tensors, rotary_transformer_forward,
                                     rotary_transformer_state, write_hub_export, write_lightning_checkpoint)

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
    assert table[2] == "| arlm | Lightning .ckpt + EMA | xlm-core -> xlm | 3.00e-06 | ok |"
    assert table[3] == "| mlm | hub export | xlm -> xlm-core | 2.00e-05 | FAIL |"
    assert table[4].endswith("| refused: its block differs | refused (allowed) |")
    assert table[6].endswith("| error: OSError: gone | FAIL |")
    assert table[-1] == "- mlm, hub export, xlm -> xlm-core: family='mlm'"


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


@pytest.mark.slow
def test_against_xlm_core_itself(tmp_path):
    """The whole check: xlm-core's venv (made on first use from the package index, then reused), xlm-core's side
    and xlm's, every family and format in both directions."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--work-dir", str(tmp_path)], capture_output=True, text=True,
                          env=env, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "family" not in line]
    assert len(rows) == 16
    assert all(row.endswith("| ok |") for row in rows if not row.startswith("| mdlm "))
