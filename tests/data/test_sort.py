import dataclasses

import numpy as np
import pytest

from xlm.data.tasks import build_task, task_config
from xlm.data.tasks.sort import (
    SORT_TASKS,
    SortCacheWarning,
    SortTaskSpec,
    generate_sort_examples,
    load_sort,
    score_sort_prediction,
    sort_cache_path,
    sort_tokenizer,
)
from xlm.registry import UnknownNameError

SMALL = dataclasses.replace(SORT_TASKS["sort"], name="sort_small", train_size=20, validation_size=7, test_size=5)


def test_examples_are_distinct_numbers_and_their_sorted_order():
    spec = SORT_TASKS["sort"]
    cols = generate_sort_examples(spec, 200, np.random.default_rng(0))
    assert len(cols["prompt"]) == len(cols["target"]) == 200
    shuffled_somewhere = False
    for prompt, target in zip(cols["prompt"], cols["target"]):
        numbers = [int(w) for w in prompt.split()]
        assert len(numbers) == len(set(numbers)) == spec.num_items
        assert all(0 <= x < spec.num_values for x in numbers)
        assert [int(w) for w in target.split()] == sorted(numbers)
        shuffled_somewhere |= numbers != sorted(numbers)
    assert shuffled_somewhere
    # every value turns up: the draw covers the whole range
    seen = {int(w) for p in cols["prompt"] for w in p.split()}
    assert seen == set(range(spec.num_values))


def test_splits_are_deterministic_and_differ(tmp_path):
    val = load_sort(SMALL, "validation", cache_dir=tmp_path)
    assert val.num_rows == 7 and val.column_names == ["prompt", "target"]
    again = load_sort(SMALL, "validation", cache_dir=tmp_path / "elsewhere")
    assert again.to_dict() == val.to_dict()
    test = load_sort(SMALL, "test", cache_dir=tmp_path)
    assert set(test["prompt"]).isdisjoint(val["prompt"])
    other_seed = load_sort(SMALL, "validation", seed=7, cache_dir=tmp_path)
    assert other_seed["prompt"] != val["prompt"]


def test_corrupt_cache_is_regenerated(tmp_path):
    expected = load_sort(SMALL, "validation", cache_dir=tmp_path).to_dict()
    path = sort_cache_path(SMALL, "validation", cache_dir=tmp_path)
    for f in path.glob("*.arrow"):
        f.unlink()
        f.write_bytes(b"not an arrow file")
    with pytest.warns(SortCacheWarning, match="regenerating"):
        assert load_sort(SMALL, "validation", cache_dir=tmp_path).to_dict() == expected


def test_cache_key_covers_spec_split_and_seed(tmp_path):
    base = sort_cache_path(SMALL, "validation", cache_dir=tmp_path)
    others = {sort_cache_path(SMALL, "test", cache_dir=tmp_path),
              sort_cache_path(SMALL, "validation", 43, cache_dir=tmp_path),
              sort_cache_path(dataclasses.replace(SMALL, num_values=101), "validation", cache_dir=tmp_path)}
    assert base not in others and len(others) == 3


def test_bad_names_and_specs(tmp_path):
    with pytest.raises(UnknownNameError, match="did you mean 'sort'"):
        load_sort("sortt", "validation", cache_dir=tmp_path)
    with pytest.raises(UnknownNameError, match="did you mean 'validation'.*test, train, validation"):
        load_sort("sort", "valid", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="num_items <= num_values"):
        SortTaskSpec(name="x", num_items=11, num_values=10)
    with pytest.raises(ValueError, match="non-negative int"):
        load_sort(SMALL, "validation", seed=-1, cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_score():
    ex = {"target": "1 4 9 12"}
    assert score_sort_prediction("1 4 9 12", ex) == {"exact_match": 1.0, "token_accuracy": 1.0}
    partial = score_sort_prediction("1 4 12 9", ex)
    assert partial["exact_match"] == 0.0 and partial["token_accuracy"] == 0.5
    assert score_sort_prediction("garbage", ex)["exact_match"] == 0.0


def test_sort_task_rows_round_trip(monkeypatch, tmp_path):
    monkeypatch.setenv("XLM_CACHE_DIR", str(tmp_path))
    task = build_task(task_config("sort"))
    spec = SORT_TASKS["sort"]
    assert task.is_seq2seq and task.max_new_tokens == spec.num_items + 1
    assert task.max_seq_len == 2 * spec.num_items + 2  # prompt, [BOS], target, [EOS]
    assert task.tokenizer.vocab_size == sort_tokenizer("sort").vocab_size
    row = task.dataset("validation")[0]
    assert task.tokenizer.decode(row["prompt_ids"]) == row["prompt"]
    assert task.tokenizer.decode(row["target_ids"]) == row["target"]
    assert task.score(row["target"], row)["exact_match"] == 1.0
