"""Sequence metrics on token sequences (ids, or words) whose special tokens are already stripped.

Pure functions, no torch import: a torch tensor or numpy array row is accepted wherever a
sequence is (it is turned into a list with ``.tolist()``).
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from typing import Any

__all__ = ["exact_match", "strip_special", "token_accuracy"]


def _as_list(seq: Any) -> list:
    if hasattr(seq, "tolist"):  # torch tensor / numpy array
        out = seq.tolist()
        if not isinstance(out, list):
            raise ValueError("expected a 1-d sequence, got a 0-d tensor/array")
        return out
    return list(seq)


def strip_special(ids: Sequence[int], special_ids: Collection[int]) -> list[int]:
    """``ids`` without the special ones (a list of python ints; a 1-d tensor row works too)."""
    special = special_ids if isinstance(special_ids, (set, frozenset)) else set(special_ids)
    return [int(i) for i in _as_list(ids) if int(i) not in special]


def exact_match(pred: Sequence[Hashable], target: Sequence[Hashable]) -> float:
    """1.0 if ``pred`` equals ``target`` element-wise and in length, else 0.0."""
    return 1.0 if _as_list(pred) == _as_list(target) else 0.0


def token_accuracy(pred: Sequence[Hashable], target: Sequence[Hashable]) -> float:
    """Correct positions / ``max(len(target), len(pred))``; both empty -> 1.0.

    Positions of ``pred`` past the end of ``target`` (and missing ones) count as errors.
    """
    p, t = _as_list(pred), _as_list(target)
    n = max(len(p), len(t))
    if n == 0:
        return 1.0
    return sum(1 for a, b in zip(p, t) if a == b) / n
