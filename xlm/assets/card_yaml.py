"""The YAML of card files, read within bounds.

PyYAML's safe loader builds plain values only, but an alias repeats a subtree without copying it: a few hundred
bytes of nested aliases (a "billion laughs") load at once, then grow past gigabytes in anything that walks them
(printing a card, `dataclasses.asdict`). Cards share fields through `base:`, so anchors and aliases are refused.
The composer recurses once per level of nesting, so nesting is bounded too, well before Python's recursion limit.
Explicit tags (`!!int`, `!!binary`, ...) are refused as well: cards need none, and PyYAML's constructors for them
fail in ways of their own on odd values.
"""

from __future__ import annotations

from typing import Any

import yaml

from xlm.errors import XlmUserError

__all__ = ["MAX_DEPTH", "RefusedYaml", "load_documents"]

MAX_DEPTH = 32  # cards nest a mapping or two (model_config, metrics); this leaves room and stays far from recursion


class RefusedYaml(XlmUserError, ValueError):
    """Valid YAML that a card file may not hold; `line` and `column` count from 1."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem)
        self.line, self.column = mark.line + 1, mark.column + 1


class _BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.NodeEvent) and event.anchor is not None:
            raise RefusedYaml(f"anchors and aliases (&{event.anchor}, *{event.anchor}) are not allowed in cards; a "
                              f"card shares another's fields with `base:`", event.start_mark)
        if isinstance(event, yaml.NodeEvent) and getattr(event, "tag", None) not in (None, "!"):
            raise RefusedYaml(f"explicit YAML tags ({event.tag}) are not allowed in cards; write the value plainly "
                              f"(quoted, for a string)", event.start_mark)
        if self._depth >= MAX_DEPTH:
            raise RefusedYaml(f"values nested deeper than {MAX_DEPTH} levels are not allowed in cards",
                              event.start_mark)
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_documents(text: str) -> list[Any]:
    """Every document of `text`, as `yaml.safe_load_all` gives them; RefusedYaml beyond the bounds, a yaml.YAMLError
    where it is not YAML, and a ValueError for a value YAML accepts but Python cannot build (a 5000-digit integer,
    the 45th of a month)."""
    return list(yaml.load_all(text, Loader=_BoundedLoader))
