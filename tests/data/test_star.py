import dataclasses
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from xlm.data.metrics import exact_match
from xlm.data.tasks.star import (
    SPLITS,
    STAR_TASKS,
    StarCacheWarning,
    StarNameError,
    StarTaskSpec,
    default_cache_dir,
    generate_star_graphs,
    load_star,
    max_prompt_tokens,
    max_target_tokens,
    path_valid,
    score_star_prediction,
    star_cache_path,
    star_tokenizer,
)

TASKS = list(STAR_TASKS)
COLUMNS = ["edge_list", "source", "goal", "path", "prompt", "target"]


# -- helpers ---------------------------------------------------------------------------------


def all_simple_paths(edges, source, goal):
    """Every simple directed path source -> goal, by exhaustive DFS."""
    succ = defaultdict(list)
    for u, v in edges:
        succ[u].append(v)
    found = []

    def dfs(node, path):
        if node == goal:
            found.append(list(path))
            return
        for nxt in succ[node]:
            if nxt not in path:
                path.append(nxt)
                dfs(nxt, path)
                path.pop()

    dfs(source, [source])
    return found


def rows(columns):
    n = len(columns["source"])
    return [{k: columns[k][i] for k in columns} for i in range(n)]


def check_graph(spec: StarTaskSpec, ex):
    edges = [tuple(e) for e in ex["edge_list"]]
    src, goal, path = ex["source"], ex["goal"], ex["path"]
    assert all(len(e) == 2 for e in ex["edge_list"])
    assert len(set(edges)) == len(edges), "duplicate edge"
    nodes = {x for e in edges for x in e}
    assert all(0 <= x < spec.num_node_ids for x in nodes)

    # the path is a directed path source -> goal along listed edges, and the only one
    assert path[0] == src and path[-1] == goal and src != goal
    assert all((a, b) in set(edges) for a, b in zip(path, path[1:]))
    assert all_simple_paths(edges, src, goal) == [path]
    # the undirected graph is a tree, so the path is unique even ignoring directions
    assert len(nodes) == len(edges) + 1
    assert len(all_simple_paths(edges + [(v, u) for u, v in edges], src, goal)) == 1

    outdeg = Counter(u for u, _ in edges)
    indeg = Counter(v for _, v in edges)
    centres = [x for x in nodes if outdeg[x] == spec.degree]
    assert len(centres) == 1, "exactly one node has out-degree == degree"
    (centre,) = centres
    assert all(outdeg[x] <= 1 for x in nodes if x != centre)
    assert all(indeg[x] <= 1 for x in nodes if x != centre)
    assert outdeg[goal] == 0
    assert indeg[src] == 0 or src == centre  # chain 0 may start at the shared centre

    if spec.generator == "simple":
        assert src == centre
        assert len(path) == spec.path_nodes
        assert len(edges) == spec.degree * (spec.path_nodes - 1)
        assert indeg[centre] == 0
        succ = {u: v for u, v in edges if u != centre}
        for first in [v for u, v in edges if u == centre]:  # each arm has path_nodes-1 edges
            arm, node = 1, first
            while node in succ:
                node, arm = succ[node], arm + 1
            assert arm == spec.path_nodes - 1
    else:
        assert spec.min_arm_nodes <= len(path) <= spec.max_arm_nodes
        assert spec.degree * (spec.min_arm_nodes - 1) <= len(edges) <= spec.degree * (spec.max_arm_nodes - 1)
        assert centre in path
        # the centre is never among the last min_plan_length nodes of a chain
        assert path.index(centre) < len(path) - spec.min_plan_length
        assert indeg[centre] <= spec.degree
        # every chain through the centre continues for >= min_plan_length - 1 edges
        succ = {u: v for u, v in edges if u != centre}
        for first in [v for u, v in edges if u == centre]:
            tail, node = 1, first
            while node in succ:
                node, tail = succ[node], tail + 1
            assert tail >= spec.min_plan_length - 1

    # text format
    flat = [x for e in ex["edge_list"] for x in e]
    assert ex["prompt"] == " ".join(map(str, flat + [src, goal]))
    pairs = [x for a, b in zip(path, path[1:]) for x in (a, b)]
    assert ex["target"] == " ".join(map(str, pairs))
    assert len(ex["prompt"].split()) <= max_prompt_tokens(spec.name)
    assert len(ex["target"].split()) <= max_target_tokens(spec.name)


# -- generator properties --------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_generated_graphs_have_the_stated_structure(task):
    spec = STAR_TASKS[task]
    cols = generate_star_graphs(spec, 300, np.random.default_rng(0))
    assert list(cols) == COLUMNS
    assert all(len(v) == 300 for v in cols.values())
    for ex in rows(cols):
        check_graph(spec, ex)


@pytest.mark.parametrize("task", ["star_medium", "star_hard"])
def test_variable_generator_covers_its_ranges(task):
    spec = STAR_TASKS[task]
    exs = rows(generate_star_graphs(spec, 400, np.random.default_rng(1)))
    path_lengths = {len(ex["path"]) for ex in exs}
    assert path_lengths == set(range(spec.min_arm_nodes, spec.max_arm_nodes + 1))
    # chain 0 sometimes starts at the centre (source is the centre), usually it does not
    centre_first = sum(Counter(u for u, _ in ex["edge_list"])[ex["source"]] == spec.degree for ex in exs)
    assert 0 < centre_first < len(exs)
    used = {x for ex in exs for e in ex["edge_list"] for x in e}
    assert used == set(range(spec.num_node_ids))


@pytest.mark.parametrize("task", TASKS)
def test_edge_list_is_shuffled(task):
    exs = rows(generate_star_graphs(task, 200, np.random.default_rng(2)))
    # the path's first edge is not always listed first
    first_is_path_edge = sum(ex["edge_list"][0] == ex["path"][:2] for ex in exs)
    assert first_is_path_edge < len(exs) / 2


def test_prompt_and_target_encode_with_the_task_tokenizer():
    for task in TASKS:
        tok = star_tokenizer(task)
        assert tok.vocab_size == 7 + STAR_TASKS[task].num_node_ids
        ex = rows(generate_star_graphs(task, 1, np.random.default_rng(3)))[0]
        assert tok.decode(tok.encode(ex["prompt"])) == ex["prompt"]
        assert tok.decode(tok.encode(ex["target"])) == ex["target"]


def test_max_token_bounds():
    assert (max_prompt_tokens("star_easy"), max_target_tokens("star_easy")) == (26, 8)
    assert (max_prompt_tokens("star_medium"), max_target_tokens("star_medium")) == (32, 10)
    assert (max_prompt_tokens("star_hard"), max_target_tokens("star_hard")) == (112, 22)


def test_specs():
    easy, med, hard = (STAR_TASKS[t] for t in ("star_easy", "star_medium", "star_hard"))
    assert (easy.generator, easy.degree, easy.path_nodes, easy.num_node_ids) == ("simple", 3, 5, 20)
    assert (med.generator, med.degree, med.min_arm_nodes, med.max_arm_nodes, med.min_plan_length,
            med.num_node_ids) == ("variable", 3, 3, 6, 2, 20)
    assert (hard.generator, hard.degree, hard.min_arm_nodes, hard.max_arm_nodes, hard.min_plan_length,
            hard.num_node_ids) == ("variable", 5, 6, 12, 5, 56)
    for spec in (easy, med, hard):
        assert spec.split_sizes == {"train": 50_000, "validation": 100, "test": 5_000}
    with pytest.raises(ValueError):
        dataclasses.replace(easy, num_node_ids=12)  # needs 13 distinct nodes
    with pytest.raises(ValueError):
        dataclasses.replace(med, min_plan_length=3)  # must be < min_arm_nodes
    with pytest.raises(dataclasses.FrozenInstanceError):
        easy.degree = 4


# -- load_star and its cache ------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_load_star_validation(task, tmp_path):
    spec = STAR_TASKS[task]
    ds = load_star(task, "validation", cache_dir=tmp_path)
    assert ds.num_rows == 100
    assert ds.column_names == COLUMNS
    for ex in ds:
        check_graph(spec, ex)
    # written atomically: only the final directory is left behind
    assert [p.name for p in tmp_path.iterdir()] == [star_cache_path(task, "validation", cache_dir=tmp_path).name]


def test_determinism_seeds_and_splits(tmp_path):
    a = load_star("star_medium", "validation", seed=7, cache_dir=tmp_path / "a").to_dict()
    b = load_star("star_medium", "validation", seed=7, cache_dir=tmp_path / "b").to_dict()
    c = load_star("star_medium", "validation", seed=8, cache_dir=tmp_path / "a").to_dict()
    test = load_star("star_medium", "test", seed=7, cache_dir=tmp_path / "a")
    assert a == b
    assert a["prompt"] != c["prompt"]
    assert a["prompt"] != test[:100]["prompt"]
    # tasks with the same node range draw different graphs
    easy = load_star("star_easy", "validation", seed=7, cache_dir=tmp_path / "a")
    assert easy["source"] != a["source"]


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("star_cache")


def test_real_split_sizes_and_disjoint_splits(session_cache):
    train = load_star("star_easy", "train", cache_dir=session_cache)
    test = load_star("star_easy", "test", cache_dir=session_cache)
    val = load_star("star_easy", "validation", cache_dir=session_cache)
    assert (train.num_rows, val.num_rows, test.num_rows) == (50_000, 100, 5_000)

    def graphs(ds):
        return {frozenset(map(tuple, e)) for e in ds["edge_list"]}

    # each split draws its own graphs (not the same graphs in another order)
    val_graphs = graphs(val)
    assert len(val_graphs) == 100
    assert not val_graphs & graphs(test)
    assert not val_graphs & graphs(train)


def _arrow_files(path: Path):
    return sorted(path.glob("*.arrow"))


def test_cache_hit_reads_the_same_files(tmp_path):
    ds1 = load_star("star_hard", "validation", cache_dir=tmp_path)
    path = star_cache_path("star_hard", "validation", cache_dir=tmp_path)
    files = _arrow_files(path)
    assert files
    before = [(f.stat().st_ino, f.stat().st_mtime_ns) for f in files]
    assert {Path(c["filename"]) for c in ds1.cache_files} == set(files)
    ds2 = load_star("star_hard", "validation", cache_dir=tmp_path)
    assert [(f.stat().st_ino, f.stat().st_mtime_ns) for f in _arrow_files(path)] == before
    assert ds2.to_dict() == ds1.to_dict()


def test_cache_key_covers_spec_split_and_seed(tmp_path):
    spec = STAR_TASKS["star_easy"]
    base = star_cache_path(spec, "validation", 42, cache_dir=tmp_path)
    assert star_cache_path("star_easy", "validation", 42, cache_dir=tmp_path) == base
    others = {
        star_cache_path(spec, "test", 42, cache_dir=tmp_path),
        star_cache_path(spec, "validation", 43, cache_dir=tmp_path),
        star_cache_path(dataclasses.replace(spec, num_node_ids=21), "validation", 42, cache_dir=tmp_path),
        star_cache_path(dataclasses.replace(spec, validation_size=10), "validation", 42, cache_dir=tmp_path),
    }
    assert base not in others and len(others) == 4


def test_custom_spec_small_sizes(tmp_path):
    spec = dataclasses.replace(STAR_TASKS["star_hard"], name="tiny_hard", validation_size=7, test_size=3)
    ds = load_star(spec, "validation", cache_dir=tmp_path)
    assert ds.num_rows == 7
    for ex in ds:
        check_graph(STAR_TASKS["star_hard"], ex)


@pytest.mark.parametrize("damage", ["garbage_arrow", "missing_state", "wrong_rows"])
def test_corrupt_cache_is_regenerated(tmp_path, damage):
    expected = load_star("star_easy", "validation", cache_dir=tmp_path).to_dict()
    path = star_cache_path("star_easy", "validation", cache_dir=tmp_path)
    if damage == "garbage_arrow":
        for f in _arrow_files(path):
            f.unlink()  # new inode: the mmap of the first load stays valid
            f.write_bytes(b"not an arrow file")
    elif damage == "missing_state":
        (path / "state.json").unlink()
    else:  # a complete, readable dataset with the wrong content
        import shutil

        shutil.rmtree(path)
        load_star(dataclasses.replace(STAR_TASKS["star_easy"], validation_size=5), "validation",
                  cache_dir=tmp_path / "other")
        os.replace(star_cache_path(dataclasses.replace(STAR_TASKS["star_easy"], validation_size=5),
                                   "validation", cache_dir=tmp_path / "other"), path)
    with pytest.warns(StarCacheWarning, match="regenerating"):
        ds = load_star("star_easy", "validation", cache_dir=tmp_path)
    assert ds.to_dict() == expected
    assert [p.name for p in tmp_path.iterdir() if p.name != "other"] == [path.name]
    # and it is a good cache again
    load_star("star_easy", "validation", cache_dir=tmp_path)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XLM_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path / "star"
    assert star_cache_path("star_easy", "test").parent == tmp_path / "star"
    monkeypatch.delenv("XLM_CACHE_DIR")
    assert default_cache_dir() == Path.home() / ".cache" / "xlm" / "star"


def test_unknown_task_and_split(tmp_path):
    with pytest.raises(StarNameError) as info:
        load_star("star_eassy", "validation", cache_dir=tmp_path)
    assert "'star_easy'" in str(info.value) and "star_hard" in str(info.value)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(ValueError) as info:
        load_star("star_easy", "valid", cache_dir=tmp_path)
    assert "'validation'" in str(info.value) and all(s in str(info.value) for s in SPLITS)
    with pytest.raises(KeyError):
        star_tokenizer("nope")
    assert not any(tmp_path.iterdir())


# -- scoring ---------------------------------------------------------------------------------

EDGES = [[3, 8], [0, 1], [8, 14], [0, 3], [14, 5], [1, 2]]  # 0 -> 3 -> 8 -> 14 -> 5, 0 -> 1 -> 2
EX = {"edge_list": EDGES, "source": 3, "goal": 5, "path": [3, 8, 14, 5], "target": "3 8 8 14 14 5"}


def test_path_valid_on_valid_predictions():
    assert path_valid("3 8 8 14 14 5", EDGES, 3, 5) == 1.0
    assert path_valid("0 3 3 8", EDGES, 0, 8) == 1.0
    assert path_valid(" 0  1\t1 2 ", EDGES, 0, 2) == 1.0
    assert path_valid("0 1", np.array(EDGES), 0, 1) == 1.0


@pytest.mark.parametrize(
    "pred",
    [
        "3 8 14 14 5 5",  # pairs do not chain
        "3 8 8 14",  # stops early
        "3 8 14 5",  # every pair is an edge, but they do not chain
        "8 14 14 5",  # wrong start
        "3 8 8 14 14 5 5 14",  # goes past the goal, ends elsewhere
        "8 3 3 5",  # not edges
        "3 14 14 5",  # skips a node (not an edge)
        "5 14 14 8 8 3",  # reversed direction
        "3 5",  # shortcut that is not an edge
    ],
)
def test_path_valid_on_invalid_predictions(pred):
    assert path_valid(pred, EDGES, 3, 5) == 0.0


@pytest.mark.parametrize("junk", ["", "   ", "3 8 8", "3 x 8 14 14 5", "3.0 8 8 14 14 5", "-3 8", "[BOS] 3 8",
                                  None, 12])
def test_path_valid_never_raises_on_junk(junk):
    assert path_valid(junk, EDGES, 3, 5) == 0.0


def test_score_star_prediction():
    assert score_star_prediction("3 8 8 14 14 5", EX) == {"exact_match": 1.0, "token_accuracy": 1.0, "path_valid": 1.0,
                                                          "branch_correct": 1.0}
    s = score_star_prediction("3 8 8 14 14 2", EX)
    assert s["exact_match"] == 0.0 and s["token_accuracy"] == pytest.approx(5 / 6) and s["path_valid"] == 0.0
    s = score_star_prediction("3 8", EX)
    assert s == {"exact_match": 0.0, "token_accuracy": pytest.approx(2 / 6), "path_valid": 0.0, "branch_correct": 0.0}
    s = score_star_prediction("garbage", EX)
    assert s == {"exact_match": 0.0, "token_accuracy": 0.0, "path_valid": 0.0, "branch_correct": 0.0}


# 4 -> 0 -> 3 -> 5 through the centre 0, whose other arms are 0 -> 1 -> 2 and 0 -> 7
BRANCHED = {"edge_list": [[0, 1], [3, 5], [4, 0], [0, 7], [1, 2], [0, 3]], "source": 4, "goal": 5,
            "path": [4, 0, 3, 5], "target": "4 0 0 3 3 5"}


@pytest.mark.parametrize("pred,branch,exact", [
    ("4 0 0 3 3 5", 1.0, 1.0),
    ("4 0 0 3 3 9", 1.0, 0.0),  # right at the centre, wrong after it
    ("4 0 0 3", 1.0, 0.0),  # stops after the decision
    ("4 0 0 1 1 2", 0.0, 0.0),  # the wrong arm
    ("4 0", 0.0, 0.0),  # stops before the decision
    ("4 9 0 3 3 5", 0.0, 0.0),  # wrong before the decision
])
def test_branch_correct_scores_the_edge_out_of_the_centre(pred, branch, exact):
    s = score_star_prediction(pred, BRANCHED)
    assert (s["branch_correct"], s["exact_match"]) == (branch, exact)


def test_dataset_targets_score_perfectly(tmp_path):
    for task in TASKS:
        ds = load_star(task, "validation", cache_dir=tmp_path)
        for ex in ds:
            score = score_star_prediction(ex["target"], ex)
            assert score["path_valid"] == 1.0 and score["branch_correct"] == 1.0
            out_degree = {}
            for u, _ in ex["edge_list"]:
                out_degree[u] = out_degree.get(u, 0) + 1
            # every path passes one branching node, the centre, with an edge out on each arm
            assert [out_degree.get(n, 0) for n in ex["path"][:-1]].count(STAR_TASKS[task].degree) == 1
            assert exact_match(ex["target"].split(), ex["target"].split()) == 1.0
        # a wrong graph's path is (almost always) not a valid path here
        wrong = sum(path_valid(ds[i]["target"], ds[i + 1]["edge_list"], ds[i + 1]["source"], ds[i + 1]["goal"])
                    for i in range(50))
        assert wrong == 0.0
