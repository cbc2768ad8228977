"""Star graph path-finding tasks (xlm-core's ``star_easy``, ``star_medium``, ``star_hard``).

Each example is a small directed graph shaped like a star, a source node and a goal node; the
model reads the shuffled edge list, the source and the goal, and writes the (unique) path from
source to goal. The graphs are generated locally and deterministically from a seed, then cached
on disk as Hugging Face datasets.

Generators (same semantics as xlm-core's ``simple_star_graph`` and
``asymmetric_variable_armlength_star_graph``; the random streams differ, xlm-core used global
RNG state):

* ``simple``: ``degree`` arms of ``path_nodes - 1`` edges each, directed outward from the
  centre. SOURCE is the centre, GOAL the end of one arm, PATH that arm (``path_nodes`` nodes).
  No node id repeats.
* ``variable``: ``degree`` chains, chain ``i`` with ``len_i ~ U[min_arm_nodes, max_arm_nodes]``
  nodes; all chains pass through one shared centre node, placed in chain ``i`` at position
  ``join_i ~ U{0, ..., len_i - min_plan_length - 1}``. Edges run along each chain in order.
  SOURCE is chain 0's first node, GOAL its last, PATH chain 0. All ids are distinct except the
  shared centre.

Text format (space separated node ids)::

    prompt = "u1 v1 u2 v2 ... uE vE SOURCE GOAL"        (shuffled edge list, then source, goal)
    target = "p0 p1 p1 p2 p2 p3"                        (path [p0, p1, p2, p3] as edge pairs)
"""

from __future__ import annotations

import difflib
import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from xlm.data.disk_cache import CacheWarning, cached_dataset, default_cache_root
from xlm.data.metrics import exact_match, token_accuracy
from xlm.data.tokenizers import WordTokenizer
from xlm.errors import XlmUserError

from .generated import SPLITS, cache_entry_name, checked_seed, split_rng

__all__ = [
    "CACHE_FORMAT_VERSION",
    "SPLITS",
    "STAR_TASKS",
    "StarCacheWarning",
    "StarNameError",
    "StarTaskSpec",
    "branch_correct",
    "default_cache_dir",
    "generate_star_graphs",
    "load_star",
    "max_prompt_tokens",
    "max_target_tokens",
    "path_valid",
    "probe_star",
    "prompt_problem",
    "score_star_prediction",
    "star_cache_path",
    "star_tokenizer",
]

#: Bumped whenever the generated data or its on-disk layout changes; part of the cache key.
CACHE_FORMAT_VERSION = 1


class StarNameError(XlmUserError, KeyError, ValueError):
    """Unknown task or split name; the message lists close matches and the valid names.

    Both a ``KeyError`` (like registry lookups) and a ``ValueError`` (like bad arguments).
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class StarCacheWarning(CacheWarning):
    """A cached star dataset could not be read and is being regenerated."""


def _unknown_name(kind: str, name: object, known: Sequence[str]) -> StarNameError:
    close = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return StarNameError(f"unknown star {kind} {name!r}{hint} Valid {kind}s: {', '.join(known)}")


@dataclass(frozen=True, kw_only=True)
class StarTaskSpec:
    """Every parameter of one star task; all of them enter the cache key."""

    name: str
    generator: Literal["simple", "variable"]
    degree: int
    num_node_ids: int
    # "simple": nodes on the path (= on each arm, centre included).
    path_nodes: int | None = None
    # "variable": chain lengths in nodes, and the fewest nodes after the centre on a chain + 1.
    min_arm_nodes: int | None = None
    max_arm_nodes: int | None = None
    min_plan_length: int | None = None
    train_size: int = 50_000
    validation_size: int = 100
    test_size: int = 5_000

    def __post_init__(self) -> None:
        if self.degree < 1:
            raise ValueError(f"{self.name}: degree must be >= 1, got {self.degree}")
        for split in SPLITS:
            if self.split_size(split) < 0:
                raise ValueError(f"{self.name}: {split}_size must be >= 0")
        if self.generator == "simple":
            if self.path_nodes is None or self.path_nodes < 2:
                raise ValueError(f"{self.name}: a simple star needs path_nodes >= 2, got {self.path_nodes}")
            if any(v is not None for v in (self.min_arm_nodes, self.max_arm_nodes, self.min_plan_length)):
                raise ValueError(f"{self.name}: min_arm_nodes/max_arm_nodes/min_plan_length are for variable stars")
        elif self.generator == "variable":
            lo, hi, mpl = self.min_arm_nodes, self.max_arm_nodes, self.min_plan_length
            if lo is None or hi is None or mpl is None:
                raise ValueError(f"{self.name}: a variable star needs min_arm_nodes, max_arm_nodes, min_plan_length")
            if self.path_nodes is not None:
                raise ValueError(f"{self.name}: path_nodes is for simple stars")
            if not 1 <= mpl < lo <= hi:
                raise ValueError(
                    f"{self.name}: need 1 <= min_plan_length < min_arm_nodes <= max_arm_nodes, "
                    f"got {mpl}, {lo}, {hi}"
                )
        else:
            raise ValueError(f"{self.name}: generator must be 'simple' or 'variable', got {self.generator!r}")
        if self.num_node_ids < self.max_graph_nodes:
            raise ValueError(
                f"{self.name}: num_node_ids={self.num_node_ids} is fewer than the "
                f"{self.max_graph_nodes} distinct nodes a graph may need"
            )

    @property
    def max_path_nodes(self) -> int:
        return self.path_nodes if self.generator == "simple" else self.max_arm_nodes  # type: ignore[return-value]

    @property
    def max_edges(self) -> int:
        return self.degree * (self.max_path_nodes - 1)

    @property
    def max_graph_nodes(self) -> int:
        return self.max_edges + 1

    def split_size(self, split: str) -> int:
        if split not in SPLITS:
            raise _unknown_name("split", split, SPLITS)
        return getattr(self, f"{split}_size")

    @property
    def split_sizes(self) -> dict[str, int]:
        return {s: self.split_size(s) for s in SPLITS}


STAR_TASKS: dict[str, StarTaskSpec] = {
    spec.name: spec
    for spec in (
        StarTaskSpec(name="star_easy", generator="simple", degree=3, path_nodes=5, num_node_ids=20),
        StarTaskSpec(
            name="star_medium", generator="variable", degree=3,
            min_arm_nodes=3, max_arm_nodes=6, min_plan_length=2, num_node_ids=20,
        ),
        StarTaskSpec(
            name="star_hard", generator="variable", degree=5,
            min_arm_nodes=6, max_arm_nodes=12, min_plan_length=5, num_node_ids=56,
        ),
    )
}


def _spec(task: str | StarTaskSpec) -> StarTaskSpec:
    if isinstance(task, StarTaskSpec):
        return task
    try:
        return STAR_TASKS[task]
    except (KeyError, TypeError):
        raise _unknown_name("task", task, list(STAR_TASKS)) from None


def star_tokenizer(task: str | StarTaskSpec) -> WordTokenizer:
    """Word tokenizer whose words are the node ids ``"0" .. str(num_node_ids - 1)``."""
    return WordTokenizer([str(i) for i in range(_spec(task).num_node_ids)])


def max_prompt_tokens(task: str | StarTaskSpec) -> int:
    """Most words a prompt can have: 2 per edge, plus source and goal (no special tokens)."""
    return 2 * _spec(task).max_edges + 2


def max_target_tokens(task: str | StarTaskSpec) -> int:
    """Most words a target can have: 2 per path edge (no special tokens)."""
    return 2 * (_spec(task).max_path_nodes - 1)


def prompt_problem(task: str | StarTaskSpec, prompt: str) -> str | None:
    """What makes `prompt` unlike the task's prompts (``u1 v1 ... uE vE SOURCE GOAL``), in one phrase, or None:
    a word count the task never has, a word that is no node id, a source no edge starts at or a goal no edge
    ends at."""
    spec = _spec(task)
    words = prompt.split()
    low, high = 2 * spec.degree * ((spec.path_nodes or spec.min_arm_nodes or 2) - 1) + 2, 2 * spec.max_edges + 2
    count = f"{low} words ({(low - 2) // 2}" if low == high else f"an even number of words from {low} to {high} (the"
    shape = f"{spec.name} prompts have {count} edges as node pairs, then the source and the goal)"
    if not low <= len(words) <= high or len(words) % 2:
        return f"it has {len(words)} words, but {shape}"
    ids = _parse_ints(prompt)
    if ids is None or max(ids) >= spec.num_node_ids:
        bad = [w for w in words if not (w.isascii() and w.isdigit() and int(w) < spec.num_node_ids)]
        return f"{', '.join(bad[:5])} {'is no node id' if len(bad) == 1 else 'are no node ids'} of {spec.name} " \
               f"(0 to {spec.num_node_ids - 1})"
    starts, ends, source, goal = ids[:-2:2], ids[1:-2:2], ids[-2], ids[-1]
    if source not in starts:
        return f"its source {source} (the second-last word) starts none of its edges; {shape}"
    if goal not in ends:
        return f"its goal {goal} (the last word) ends none of its edges; {shape}"
    return None


# -- generation ----------------------------------------------------------------------------------


def _distinct_ids(rng: np.random.Generator, n: int, num_ids: int, k: int) -> np.ndarray:
    """(n, k) int64: per row, k distinct ids drawn uniformly from range(num_ids), in random order."""
    return np.argsort(rng.random((n, num_ids)), axis=1)[:, :k]


def _simple_graphs(spec: StarTaskSpec, n: int, rng: np.random.Generator):
    d, arm = spec.degree, spec.path_nodes - 1  # type: ignore[operator]
    ids = _distinct_ids(rng, n, spec.num_node_ids, d * arm + 1)
    centre = ids[:, :1]
    # chains[:, a] = centre followed by arm a's nodes, outward
    chains = np.concatenate(
        [np.broadcast_to(centre[:, None, :], (n, d, 1)), ids[:, 1:].reshape(n, d, arm)], axis=2
    )
    edges = np.stack([chains[:, :, :-1], chains[:, :, 1:]], axis=-1).reshape(n, d * arm, 2)
    order = np.argsort(rng.random((n, d * arm)), axis=1)
    edges = np.take_along_axis(edges, order[:, :, None], axis=1)
    num_edges = np.full(n, d * arm)
    path_len = np.full(n, arm + 1)
    return edges, num_edges, chains[:, 0, :], path_len


def _variable_graphs(spec: StarTaskSpec, n: int, rng: np.random.Generator):
    d, lo, hi, mpl = spec.degree, spec.min_arm_nodes, spec.max_arm_nodes, spec.min_plan_length
    lens = rng.integers(lo, hi + 1, size=(n, d))  # type: ignore[operator]
    join = rng.integers(0, lens - mpl)  # per chain, uniform over range(len_i - min_plan_length)
    ids = _distinct_ids(rng, n, spec.num_node_ids, d * hi - d + 1)  # type: ignore[operator]
    pos = np.arange(hi)
    valid = pos[None, None, :] < lens[:, :, None]  # (n, d, hi)
    fresh = valid & (pos[None, None, :] != join[:, :, None])
    # like xlm-core: walk the chains in order, taking ids[1], ids[2], ... for every node but
    # the join position, which is the centre ids[0]
    idx = np.where(fresh, np.cumsum(fresh.reshape(n, -1), axis=1).reshape(n, d, hi), 0)
    nodes = np.take_along_axis(ids, idx.reshape(n, -1), axis=1).reshape(n, d, hi)
    edges = np.stack([nodes[:, :, :-1], nodes[:, :, 1:]], axis=-1).reshape(n, d * (hi - 1), 2)
    edge_valid = valid[:, :, 1:].reshape(n, -1)
    keys = rng.random((n, d * (hi - 1)))
    keys[~edge_valid] = 2.0  # padding sorts after every real edge
    order = np.argsort(keys, axis=1)
    edges = np.take_along_axis(edges, order[:, :, None], axis=1)
    num_edges = lens.sum(axis=1) - d
    return edges, num_edges, nodes[:, 0, :], lens[:, 0]


def generate_star_graphs(
    task: str | StarTaskSpec, num_graphs: int, rng: np.random.Generator
) -> dict[str, list]:
    """``num_graphs`` graphs of ``task`` drawn from ``rng``, as dataset columns.

    Columns: ``edge_list`` (shuffled ``[u, v]`` pairs), ``source``, ``goal``, ``path``,
    ``prompt``, ``target`` (see the module docstring for the text format).
    """
    spec = _spec(task)
    if num_graphs < 0:
        raise ValueError(f"num_graphs must be >= 0, got {num_graphs}")
    gen = _simple_graphs if spec.generator == "simple" else _variable_graphs
    edges, num_edges, paths, path_len = gen(spec, num_graphs, rng)

    names = [str(i) for i in range(spec.num_node_ids)]
    flat_rows = edges.reshape(num_graphs, -1).tolist()
    path_rows = paths.tolist()
    out: dict[str, list] = {k: [] for k in ("edge_list", "source", "goal", "path", "prompt", "target")}
    for flat, e, prow, plen in zip(flat_rows, num_edges.tolist(), path_rows, path_len.tolist()):
        flat = flat[: 2 * e]
        path = prow[:plen]
        src, goal = path[0], path[-1]
        out["edge_list"].append([flat[i : i + 2] for i in range(0, 2 * e, 2)])
        out["source"].append(src)
        out["goal"].append(goal)
        out["path"].append(path)
        out["prompt"].append(" ".join([names[x] for x in flat] + [names[src], names[goal]]))
        out["target"].append(_path_to_target([names[x] for x in path]))
    return out


def _path_to_target(words: Sequence[str]) -> str:
    """[a, b, c, d] -> "a b b c c d"."""
    if len(words) < 2:
        return " ".join(words)
    return " ".join([words[0]] + [w for w in words[1:-1] for _ in (0, 1)] + [words[-1]])


def _features():
    from datasets import Features, Value

    try:
        from datasets import List
    except ImportError:  # datasets < 4
        from datasets import Sequence as List

    return Features(
        {
            "edge_list": List(List(Value("int64"))),
            "source": Value("int64"),
            "goal": Value("int64"),
            "path": List(Value("int64")),
            "prompt": Value("string"),
            "target": Value("string"),
        }
    )


def _generate_split(spec: StarTaskSpec, split: str, seed: int):
    from datasets import Dataset

    cols = generate_star_graphs(spec, spec.split_size(split), split_rng(spec.name, split, seed))
    return Dataset.from_dict(cols, features=_features())


# -- caching -------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """`star` in the cache root (``$XLM_CACHE_DIR``, ``$XDG_CACHE_HOME/xlm`` or ``~/.cache/xlm``)."""
    return default_cache_root() / "star"


def star_cache_path(
    task: str | StarTaskSpec, split: str, seed: int = 42, *, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The directory :func:`load_star` keeps this split in."""
    spec = _spec(task)
    spec.split_size(split)  # validates the split name
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / cache_entry_name(spec, split, seed, CACHE_FORMAT_VERSION)


def _check_cache(expected_rows: int):
    def check(ds) -> None:
        if ds.num_rows != expected_rows:
            raise ValueError(f"expected {expected_rows} rows, found {ds.num_rows}")
        if ds.features != _features():
            raise ValueError(f"unexpected features {ds.features}")

    return check


def load_star(
    task: str | StarTaskSpec,
    split: str,
    seed: int = 42,
    *,
    cache_dir: str | os.PathLike | None = None,
):
    """One split of a star task as a ``datasets.Dataset`` (generated once, then read from cache).

    Columns: ``edge_list`` (list of ``[u, v]``), ``source``, ``goal``, ``path``, ``prompt``,
    ``target``. ``task`` is a name in :data:`STAR_TASKS` (or a :class:`StarTaskSpec`);
    ``split`` one of :data:`SPLITS`. The cache lives under ``cache_dir`` (default
    :func:`default_cache_dir`) in a directory keyed by every spec parameter, the split, the
    seed and :data:`CACHE_FORMAT_VERSION`; it is written atomically, and an unreadable cache
    is regenerated with a :class:`StarCacheWarning`.
    """
    spec = _spec(task)
    if split not in SPLITS:
        raise _unknown_name("split", split, SPLITS)
    seed = checked_seed(seed)
    path = star_cache_path(spec, split, seed, cache_dir=cache_dir)

    return cached_dataset(path, lambda: _generate_split(spec, split, seed), _check_cache(spec.split_size(split)),
                          warning=StarCacheWarning)


# -- scoring -------------------------------------------------------------------------------------


def _parse_ints(text: str) -> list[int] | None:
    out = []
    for tok in text.split():
        if not (tok.isascii() and tok.isdigit()):
            return None
        out.append(int(tok))
    return out


def path_valid(pred_text: str, edge_list: Any, source: int, goal: int) -> float:
    """1.0 if ``pred_text`` (target format ``"a b b c c d"``) is a path from source to goal.

    Each pair must be an edge of ``edge_list`` (directed as listed), consecutive pairs must
    chain, the first pair must start at ``source`` and the last end at ``goal``. Anything else,
    including junk text, gives 0.0 (never raises).
    """
    try:
        nums = _parse_ints(pred_text) if isinstance(pred_text, str) else None
        if not nums or len(nums) % 2:
            return 0.0
        if hasattr(edge_list, "tolist"):
            edge_list = edge_list.tolist()
        edges = {(int(u), int(v)) for u, v in edge_list}
        pairs = [(nums[i], nums[i + 1]) for i in range(0, len(nums), 2)]
        if pairs[0][0] != int(source) or pairs[-1][1] != int(goal):
            return 0.0
        for (a, b), nxt in zip(pairs, pairs[1:] + [None]):
            if (a, b) not in edges:
                return 0.0
            if nxt is not None and nxt[0] != b:
                return 0.0
        return 1.0
    except Exception:
        return 0.0


def branch_correct(pred_words: Sequence[str], target_words: Sequence[str], path: Sequence[int],
                   edge_list: Any) -> float:
    """1.0 if the prediction agrees with the target up to and including the edge out of the path's
    first branching node (the first node with several outgoing edges; the centre of a star).

    Every other step of a star path is forced by the edge list, so this isolates the one decision
    a teacher-forced model is reported to guess at (Bachmann & Nagarajan 2024: near 1/degree);
    ``exact_match / branch_correct`` is then how often the rest follows. A path with no branching
    node has no decision, and the whole target is compared.
    """
    if hasattr(edge_list, "tolist"):
        edge_list = edge_list.tolist()
    out_degree = Counter(int(u) for u, _ in edge_list)
    nodes = [int(n) for n in path]
    branch = next((i for i, n in enumerate(nodes[:-1]) if out_degree[n] > 1), None)
    upto = len(target_words) if branch is None else 2 * (branch + 1)  # words of edges 0..branch
    # a prediction shorter than `upto` has a shorter prefix, so it never compares equal
    return 1.0 if list(pred_words[:upto]) == list(target_words[:upto]) else 0.0


def score_star_prediction(pred_text: str, example: Mapping[str, Any]) -> dict[str, float]:
    """``exact_match``, ``token_accuracy`` (over whitespace words), ``path_valid`` and
    ``branch_correct`` of one prediction."""
    target = example.get("target")
    if target is None:
        target = _path_to_target([str(x) for x in example["path"]])
    pred_words = pred_text.split() if isinstance(pred_text, str) else []
    target_words = target.split()
    return {
        "exact_match": exact_match(pred_words, target_words),
        "token_accuracy": token_accuracy(pred_words, target_words),
        "path_valid": path_valid(pred_text, example["edge_list"], example["source"], example["goal"]),
        "branch_correct": branch_correct(pred_words, target_words, example["path"], example["edge_list"]),
    }


# -- probe ---------------------------------------------------------------------------------------

#: (examples, reveal) -> (rows, slots): P(the target's token at each slot | the prompt and the first reveal[r]
#: target slots, the rest hidden), NaN where the model cannot be read that way (a unit's `target_probs`).
TargetProbs = Callable[[Sequence[Mapping[str, Any]], Sequence[int]], Any]


def _first_slot(k: int) -> int:
    """Target slot where path node k first appears ("p0 p1 p1 p2 p2 ... pN"): 0, then 2k - 1."""
    return 0 if k == 0 else 2 * k - 1


def probe_star(target_probs: TargetProbs, examples: Sequence[Mapping[str, Any]]) -> list[dict[str, float]]:
    """Per example, the probability the model puts on the right node where a star path needs an edge lookup,
    read from one batched forward (Bachmann & Nagarajan 2024; xlm issue #30):

    * ``probe_goal_pred``: the goal's predecessor y (the one edge into the goal gives it) with the whole
      target hidden, mean over y's slots: the first decision of a masked model. A model that learnt the slot
      layout and copies but no lookup spreads it over the non-source nodes (~1/9 on star_easy).
    * ``probe_next``: node k+1 at its first slot with the target up to node k revealed, at the nodes k with
      one outgoing edge (a forward lookup), mean over them.
    * ``probe_branch``: the same at the nodes with several outgoing edges (the centre): the plan, ~1/degree
      for a model that guesses.

    A value the family cannot read (``target_probs`` gives NaN, e.g. ``probe_goal_pred`` of a left-to-right
    model) is NaN. Rows: one with nothing revealed and one per path edge, each example's in one call."""
    rows, reveal = [], []
    for example in examples:
        n = len(example["path"])
        rows += [example] * n
        reveal += [0] + [_first_slot(k + 1) for k in range(n - 1)]  # up to node k's last slot, _first_slot(k + 1) - 1
    probs = target_probs(rows, reveal)
    out, row = [], 0
    for example in examples:
        path = [int(x) for x in example["path"]]
        edges = example["edge_list"].tolist() if hasattr(example["edge_list"], "tolist") else example["edge_list"]
        out_degree = Counter(int(u) for u, _ in edges)
        n = len(path)
        y = n - 2
        y_slots = [0] if y == 0 else [_first_slot(y), _first_slot(y) + 1]
        goal_pred = float(probs[row, y_slots].mean())
        steps = {True: [], False: []}  # branch node? -> P(next node)
        for k in range(n - 1):
            steps[out_degree[path[k]] > 1].append(float(probs[row + 1 + k, _first_slot(k + 1)]))
        out.append({"probe_goal_pred": goal_pred,
                    "probe_next": float(np.mean(steps[False])) if steps[False] else float("nan"),
                    "probe_branch": float(np.mean(steps[True])) if steps[True] else float("nan")})
        row += n
    return out
