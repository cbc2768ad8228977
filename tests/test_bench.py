"""The bench recipe runs and its correctness columns hold (its timings are reported, never asserted)."""

import json

import pytest

from benchmarks import bench


def test_mdlm_cache_section_small():
    for row in bench.bench_mdlm_cache(True, steps=60, length=16, batches=(1, 3)):
        assert row["same_tokens"] and row["cached_forwards"] < row["uncached_forwards"] <= row["steps"]


@pytest.mark.slow
def test_quick_bench_sections(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench.main(["mdlm_cache", "generate", "--quick", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["peak"][0]["gflops"] > 0
    for row in result["mdlm_cache"]:
        assert row["same_tokens"] and row["cached_forwards"] < row["uncached_forwards"] <= row["steps"]
    assert all(row["same_tokens"] for row in result["generate"])  # our KV-cache decoding = HF generate
    assert "## mdlm_cache" in capsys.readouterr().out
    assert bench.main(["nope"]) == 2


def test_generate_section_gives_hf_generate_tokens():
    rows = bench.bench_generate(True)
    assert [r["batch"] for r in rows] == [1, 8]
    assert all(r["same_tokens"] for r in rows)  # our KV-cache decoding = HF generate, greedy


def test_ilm_multi_insertion_calls_the_model_less_with_the_shipped_checkpoint():
    rows = bench.bench_ilm_multi(True)
    forwards, row_calls = [r["forwards"] for r in rows], [r["row_calls"] for r in rows]
    assert [r["insertions_per_step"] for r in rows] == [1, 2, 4, 8, 16]
    assert forwards == sorted(forwards, reverse=True) and row_calls == sorted(row_calls, reverse=True)
    assert row_calls[-1] < row_calls[0]
    assert rows[0]["fewer_forwards"] == 1.0 and rows[-1]["fewer_forwards"] == round(forwards[0] / forwards[-1], 2)
    assert rows[-1]["fewer_row_calls"] == round(row_calls[0] / row_calls[-1], 2)
    assert rows[-1]["exact_match_change"] == round(rows[-1]["exact_match"] - rows[0]["exact_match"], 4)


def test_ilm_multi_on_the_shipped_sort_model_calls_the_model_3x_less_at_equal_exact_match():
    rows = bench.bench_ilm_multi(True, "ilm_sort", "sort")  # 40-token targets; the first 100 test examples
    assert rows[0]["row_calls"] == 41.0  # one insertion per call and a stop call
    assert rows[-1]["insertions_per_step"] == 16
    assert rows[-1]["fewer_row_calls"] >= 3.0 and rows[-1]["exact_match_change"] >= -0.02, rows


def test_targets_compare_each_goal_with_the_measured_row():
    results = {"hf_gpt2": [{"shape": "4x128", "hf_over_xlm": 1.3}, {"shape": "6x256", "hf_over_xlm": 1.1}],
               "train": [{"size": "S", "arch": "arlm_star", "mfu": 0.2},
                         {"size": "L", "arch": "arlm_star", "mfu": 0.7}],
               "ilm_multi": [{"insertions_per_step": 1, "fewer_row_calls": 1.0},
                             {"insertions_per_step": 8, "fewer_row_calls": 2.25}]}
    rows = bench.targets(results)
    assert [(r["measured"], r["met"]) for r in rows] == [(1.3, True), (1.1, False), (0.7, True), (2.25, False)]
    assert rows[2]["where"] == "arch=arlm_star"
    # fewer calls count only at equal exact match (within bench.EXACT_MATCH_TOLERANCE)
    for change, met in ((0.0, True), (-0.01, True), (-0.02, False)):
        ilm = {"ilm_multi": [{"insertions_per_step": 1, "fewer_row_calls": 1.0},
                             {"task": "sort", "insertions_per_step": 16, "fewer_row_calls": 3.5,
                              "exact_match_change": change}]}
        assert [r["met"] for r in bench.targets(ilm)] == [met]


def test_ilm_multi_takes_the_task_from_the_command_line(tmp_path):
    out = tmp_path / "bench.json"  # the shipped star_easy model on star_medium prompts (same vocabulary)
    assert bench.main(["ilm_multi", "--quick", "--ilm-task", "star_medium", "--output", str(out)]) == 0
    rows = json.loads(out.read_text())["ilm_multi"]
    assert {r["task"] for r in rows} == {"star_medium"} and rows[-1]["row_calls"] < rows[0]["row_calls"]
    assert json.loads(out.read_text())["targets"][-1]["where"].startswith("task=star_medium, insertions_per_step=16, ")


def test_train_section_counts_each_familys_own_flops():
    rows = {r["arch"]: r for r in bench.bench_train(True)}
    assert set(rows) == {"arlm_star", "mlm_star", "mdlm_star", "ilm_star"}
    for r in rows.values():
        assert r["peak_gflops"] > 0 and r["mfu"] == pytest.approx(r["gflops"] / r["peak_gflops"], abs=2e-3)
    # MDLM's conditioning runs once per row, so its FLOPs per token are far below 6 x its parameters
    model = bench.xlm.create_model("mdlm_star", vocab_size=128, **bench.SIZES["S"], cond_dim=64)
    family = bench.xlm.get_family("mdlm")
    unit = family.unit_factory(model, bench.TOKENIZER, family.sampler_config_class(max_new_tokens=9))
    batch = unit.collate_train(bench._star_examples(4))
    tokens = int(batch["attention_mask"].sum())
    counted = bench._train_flops_per_step(model, lambda: unit.loss(model, batch)["loss"].backward(),
                                          tokens=tokens, seq_len=batch["attention_mask"].size(1))
    attention = 12 * model.config.num_layers * model.config.model_dim * batch["attention_mask"].size(1) * tokens
    non_embedding = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n)
    assert 0.5 < (counted - attention) / (6 * non_embedding * tokens) < 0.9  # 6N per token would overcount


def test_hf_gpt2_rows_carry_the_floor_that_bounds_their_ratio():
    for row in bench.bench_hf_gpt2(True):
        assert row["sdpa_s"] > 0 and row["matmul_floor_s"] > 0
        assert row["hf_over_floor"] == pytest.approx(row["hf_s"] / (row["sdpa_s"] + row["matmul_floor_s"]), abs=0.02)


def test_data_wait_section_times_the_trainers_wait_with_and_without_workers():
    from benchmarks.data_wait import bench_data_wait

    rows = bench_data_wait(True, archs=("mlm_star",))
    assert [r["num_workers"] for r in rows] == [0, 2]
    for r in rows:
        assert 0 < r["data_wait_steady"] < 1 and 0 < r["data_wait"] < 1
        assert r["data_wait_ms"] < r["step_ms"] and r["first_wait_ms"] > 0


def test_memory_of_a_training_step_in_a_fresh_process_holds_weights_gradients_and_adam():
    import xlm
    from benchmarks.memory import MemoryCase, _measure_in_fresh_process

    case = MemoryCase("arlm", False, "cpu", batch=2, seq=64, layers=2, dim=256, vocab=4096)
    params = sum(p.numel() for p in xlm.create_model("arlm_star", vocab_size=4096, model_dim=256, num_layers=2,
                                                     num_heads=4, ffn_dim=1024, max_seq_len=66).parameters())
    parent = bytearray(600 * 2**20)  # a large parent (Linux's ru_maxrss would carry its peak into the child)
    parent[:: 4096] = b"\1" * len(parent[:: 4096])
    peak = _measure_in_fresh_process(case)
    del parent
    assert 4 * 4 * params < peak < 4 * 4 * params + 300 * 2**20  # weights, gradients, AdamW's two moments


@pytest.mark.parametrize("card", bench.SHIPPED_MASKED)
def test_unmasking_by_confidence_calls_the_shipped_masked_models_less(card):
    rows = bench.bench_unmasking(True, card)
    assert rows[0]["sampler"] == "one per call" and rows[0]["fewer_row_calls"] == 1.0
    thresholds = [r for r in rows if r["sampler"].startswith("threshold")]
    assert [r["sampler"] for r in thresholds] == [f"threshold {t}" for t in bench.UNMASK_THRESHOLDS]
    block = bench.xlm.load_generator(card).sampler_config.max_new_tokens
    assert rows[0]["row_calls"] == block  # the whole block, one position per call
    # a lower threshold never takes more calls: it commits a superset at each call of the same state
    calls = [r["row_calls"] for r in thresholds]
    assert calls == sorted(calls, reverse=True) and calls[-1] < block
    for r in rows:  # (MDLM's ancestral sampler takes its own number of steps)
        assert r["fewer_row_calls"] == round(block / r["row_calls"], 2)
        assert 0 < r["forwards"] <= block or r["sampler"].startswith("ancestral")
        assert r["exact_match_change"] == round(r["exact_match"] - rows[0]["exact_match"], 4)


def test_unmasking_target_takes_the_fewest_calls_within_half_a_point():
    def row(model, sampler, fewer, change):
        return {"model": model, "task": "sort", "sampler": sampler, "fewer_row_calls": fewer,
                "exact_match_change": change}

    results = {"unmasking": [row("a", "one per call", 1.0, 0.0), row("a", "threshold 0.9", 2.0, 0.0),
                             row("a", "threshold 0.8", 3.5, -0.004), row("a", "threshold 0.7", 5.0, -0.02),
                             row("b", "one per call", 1.0, 0.0), row("b", "ancestral T=32 sample", 4.0, 0.0),
                             row("b", "threshold 0.9", 2.5, -0.01)]}
    targets = bench.targets(results)
    assert [(t["measured"], t["met"]) for t in targets] == [(3.5, True), (1.0, False)]
    assert "sampler=threshold 0.8" in targets[0]["where"] and "sampler=one per call" in targets[1]["where"]
