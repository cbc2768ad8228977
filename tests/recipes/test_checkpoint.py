import torch
import pytest

from xlm.recipes.checkpoint import (CheckpointError, checkpoint_dirs, load_checkpoint, load_latest_checkpoint,
                                   save_checkpoint)


def _save(root, step, value):
    return save_checkpoint(root, step, model_state={"w": torch.full((3,), float(value))}, ema_state=None,
                           trainer_state={"step": step, "rng": torch.get_rng_state()}, keep_last=2)


def test_keeps_the_last_k_and_leaves_no_temp_dirs(tmp_path):
    for step in (1, 2, 3):
        _save(tmp_path, step, step)
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [2, 3]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000000002", "step_000000003"]
    model, ema, state = load_checkpoint(tmp_path / "step_000000003")
    assert model["w"].tolist() == [3.0] * 3 and ema is None and state["step"] == 3


def test_a_truncated_checkpoint_is_named_and_skipped(tmp_path):
    _save(tmp_path, 1, 1)
    newest = _save(tmp_path, 2, 2)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:20])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(newest)
    with pytest.warns(UserWarning, match="step 2"):
        path, (model, _, state) = load_latest_checkpoint(tmp_path)
    assert path.name == "step_000000001" and state["step"] == 1
