"""The errors xlm raises on purpose, under one base.

`XlmError` is the base of them all; `XlmUserError` marks the mistakes a user can fix (a name,
a path, a config value, a file that is not what it claims), which every command prints as one
line and exits 2 on (`reports_user_errors` around its `main`). Each error keeps a builtin base
too (ValueError, KeyError, ...), so code that caught those before still does.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import ParamSpec

P = ParamSpec("P")


class XlmError(Exception):
    """Base of every error xlm raises on purpose."""


class XlmUserError(XlmError):
    """A mistake the user can fix; its message says what was wrong and what would be right."""


class XlmWarning(UserWarning):
    """Base of every warning xlm gives on purpose; a command prints each as `warning: <message>`."""


class PathNotFoundError(XlmUserError, FileNotFoundError):
    """A file or directory named by the user (on the command line, in a card or a config) that is not there."""


class PathExistsError(XlmUserError, FileExistsError):
    """A path that already holds what a command would overwrite, and it was not asked to."""


class UnknownFormatError(XlmUserError, ValueError):
    """A file or directory whose format cannot be told, or is not one xlm reads."""


class InvalidValueError(XlmUserError, ValueError):
    """A value given for a setting (a config field, a command-line option, a URI, the data a setting
    names) that it cannot take; the message names the setting and what it takes."""


@contextlib.contextmanager
def user_values() -> Iterator[None]:
    """Around building a config from values a user gave: a ValueError or TypeError it raises (the
    config's own validation, an unknown field) becomes an InvalidValueError, its message unchanged."""
    try:
        yield
    except XlmError:
        raise
    except (TypeError, ValueError) as err:
        raise InvalidValueError(str(err)) from err


#: The exit status of a command stopped by Ctrl-C, as a shell reports a process that SIGINT ended.
INTERRUPTED_EXIT = 130


def reports_user_errors(main: Callable[P, int]) -> Callable[P, int]:
    """A command's `main` that prints a user error as `error: <message>` on stderr and returns 2:
    the message already says what to fix, so a traceback would only bury it. Ctrl-C is the user's
    own doing too: one line, `interrupted`, and 130. Other errors (bugs, internal state) keep their
    traceback. xlm's own warnings are one line too, `warning: <message>`, without the source line that
    Python adds for a programmer."""

    @functools.wraps(main)
    def run(*args: P.args, **kwargs: P.kwargs) -> int:
        try:
            with warnings.catch_warnings():
                warnings.showwarning = _one_line_for_xlm(warnings.showwarning)
                return main(*args, **kwargs)
        except XlmUserError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return INTERRUPTED_EXIT

    return run


def _one_line_for_xlm(show: Callable[..., None]) -> Callable[..., None]:
    """`warnings.showwarning` for a command: xlm's warnings as one line, any other as `show` shows it."""

    def shown(message: Warning | str, category: type[Warning], *args: object, **kwargs: object) -> None:
        if issubclass(category, XlmWarning):
            print(f"warning: {message}", file=sys.stderr, flush=True)
        else:
            show(message, category, *args, **kwargs)
    return shown


def listing(keys: Sequence[str], limit: int = 40) -> str:
    """The first `limit` keys, comma-separated, then how many more there are."""
    keys = list(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


class ConversionError(XlmUserError, ValueError):
    """A state dict that does not fit its target: missing, unexpected and wrong-shape keys are
    listed together in one message, with the file they came from when known."""

    def __init__(self, message: str | None = None, *, missing: Iterable[str] = (), unexpected: Iterable[str] = (),
                 wrong_shapes: Iterable[tuple[str, tuple[int, ...], tuple[int, ...]]] = (),
                 source: str | Path | None = None, target: str = "the model") -> None:
        self.missing = sorted(missing)
        self.unexpected = sorted(unexpected)
        self.wrong_shapes = sorted(wrong_shapes)
        self.source = None if source is None else str(source)
        parts = []
        if message:
            parts.append(message)
        if self.missing:
            parts.append(f"{len(self.missing)} missing key(s): {listing(self.missing)}")
        if self.unexpected:
            parts.append(f"{len(self.unexpected)} unexpected key(s): {listing(self.unexpected)}")
        if self.wrong_shapes:
            shapes = [f"{k} (checkpoint {tuple(got)}, {target} {tuple(want)})" for k, got, want in self.wrong_shapes]
            parts.append(f"{len(shapes)} wrong shape(s): {listing(shapes, 20)}")
        where = f"{self.source}: " if self.source else ""
        super().__init__(where + ("; ".join(parts) if parts else "conversion failed"))


class CheckpointReadError(XlmUserError, ValueError):
    """A checkpoint file that cannot be parsed; the message names the file and its apparent format."""
