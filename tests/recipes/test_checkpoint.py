import shutil

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlm.recipes.checkpoint import (CheckpointError, checkpoint_dirs, clear_interrupted_writes,
                                   is_readable_checkpoint, load_checkpoint, load_latest_checkpoint,
                                   prune_checkpoints, save_checkpoint)


def _save(root, step, value, keep_last=2):
    return save_checkpoint(root, step, model_state={"w": torch.full((3,), float(value))}, ema_state=None,
                           trainer_state={"step": step, "rng": torch.get_rng_state()}, keep_last=keep_last)


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


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_pruning_counts_only_readable_checkpoints_up_to_the_current_step(tmp_path):
    for step in (1, 2, 3, 5, 6):
        _save(tmp_path, step, step, keep_last=0)
    for step in (2, 5, 6):  # 5 and 6: a later timeline, unreadable; 2: unreadable and old
        _truncate(tmp_path / f"step_{step:09d}" / "model.safetensors")
    # a resumed run (from step 3) writes step 4: 4 and 3 are the newest readable ones up to step 4
    _save(tmp_path, 4, 4)
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [3, 4, 5, 6]


def test_the_checkpoint_just_written_is_never_pruned(tmp_path):
    for step in (7, 8):
        _save(tmp_path, step, step, keep_last=0)
    assert prune_checkpoints(tmp_path, 1, current_step=3) == []  # nothing at or before step 3 but 3 itself
    _save(tmp_path, 3, 3)
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [3, 7, 8]


def test_protected_steps_survive_pruning(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, step, keep_last=0)
    prune_checkpoints(tmp_path, 1, current_step=4, keep={2})
    assert [s for s, _ in checkpoint_dirs(tmp_path)] == [2, 4]


def test_readability_is_judged_from_headers_and_sizes(tmp_path):
    path = _save(tmp_path, 1, 1)
    assert is_readable_checkpoint(path)
    for name in ("trainer_state.pt", "model.safetensors"):
        broken = tmp_path / name
        shutil.copytree(path, broken)
        _truncate(broken / name)
        assert not is_readable_checkpoint(broken), name
    assert not is_readable_checkpoint(tmp_path / "missing")


def test_interrupted_writes_are_cleared_and_a_moved_aside_checkpoint_is_put_back(tmp_path):
    done = _save(tmp_path, 1, 1)
    replaced = _save(tmp_path, 2, 2)
    shutil.copytree(done, tmp_path / ".step_000000003.tmp-abc")  # a write cut short
    shutil.copytree(done, tmp_path / ".step_000000001.old-123")  # its replacement arrived: stale
    replaced.rename(tmp_path / ".step_000000002.old-123")  # killed between commit_dir's two renames
    (tmp_path / ".best.json.tmp-9").write_text("{")
    (tmp_path / ".keep-me").mkdir()  # not a checkpoint write: left alone
    assert clear_interrupted_writes(tmp_path) == [
        "removed .best.json.tmp-9", "removed .step_000000001.old-123",
        "restored step_000000002 from .step_000000002.old-123", "removed .step_000000003.tmp-abc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep-me", "step_000000001", "step_000000002"]
    assert load_checkpoint(tmp_path / "step_000000002")[0]["w"].tolist() == [2.0] * 3


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.dictionaries(st.integers(1, 12), st.booleans(), max_size=8), current=st.integers(1, 12),
       keep_last=st.integers(1, 4), protected=st.sets(st.integers(1, 12), max_size=2))
def test_pruning_keeps_what_it_promises(tmp_path_factory, steps, current, keep_last, protected):
    """For any mix of readable and unreadable checkpoints before and after the current step: the one
    at the current step, the protected ones, every one after the current step, and the newest
    `keep_last` readable ones are kept; every other one at or before the current step is deleted."""
    root = tmp_path_factory.mktemp("ckpts")
    for step, readable in steps.items():
        _save(root, step, step, keep_last=0)
        if not readable:
            _truncate(root / f"step_{step:09d}" / "trainer_state.pt")
    prune_checkpoints(root, keep_last, current_step=current, keep=protected)
    newest_readable = sorted(s for s, ok in steps.items() if ok and s <= current)[-keep_last:]
    expected = {s for s in steps if s > current or s == current or s in protected or s in newest_readable}
    assert {s for s, _ in checkpoint_dirs(root)} == expected
