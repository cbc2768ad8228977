"""The run's history, `<run dir>/history.jsonl`: one line per segment of training (the first start
and each resume), written before the segment trains, so that a run whose settings were changed on
purpose says which, when, by which command, and from which checkpoint on."""

from __future__ import annotations

import datetime
import json
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

from .resume_changes import ConfigChange

HISTORY_FILE = "history.jsonl"


class ChangeRecord(TypedDict):
    key: str
    before: Any
    after: Any
    changes_result: bool


class InitialWeights(TypedDict):
    """What a fresh start from init_from loaded: a card's name can come to mean other weights later."""

    init_from: str  # as the config gave it
    loaded: str  # what it resolved to: "card mdlm_star_easy", "runs/x, checkpoint step_4 (EMA weights)"
    weights_sha256: str  # xlm.recipes.init_from.weights_digest of the weights the run started from


class Segment(TypedDict):
    started: str
    host: str
    pid: int
    command: list[str]  # the command-line arguments that started this segment
    resumed_from: str | None  # the checkpoint dir it continued, None for a fresh start
    step: int
    world_size: int
    resume_changes: str  # trainer.resume_changes, which allowed the changes below that change the result
    changes: list[ChangeRecord]  # settings that differ from the checkpoint's
    initial_weights: InitialWeights | None  # a fresh start from init_from; None otherwise


def new_segment(*, command: Sequence[str], resumed_from: Path | None, step: int, world_size: int,
                resume_changes: str, changes: Sequence[ConfigChange],
                initial_weights: InitialWeights | None = None) -> Segment:
    return Segment(started=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                   host=socket.gethostname(), pid=os.getpid(), command=list(command),
                   resumed_from=None if resumed_from is None else str(resumed_from), step=step, world_size=world_size,
                   resume_changes=resume_changes,
                   changes=[ChangeRecord(key=c.key, before=c.before, after=c.after, changes_result=c.changes_result)
                            for c in changes],
                   initial_weights=initial_weights)


def append_segment(output_dir: Path, segment: Segment) -> None:
    """Appends one line and syncs it: the run dir's lock makes this process its only writer."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / HISTORY_FILE, "a") as f:
        f.write(json.dumps(segment, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())



def read_segments(output_dir: Path) -> list[dict[str, Any]]:
    """The segments recorded so far, oldest first (a line a crash cut short is left out)."""
    path = output_dir / HISTORY_FILE
    segments = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            segments.append(json.loads(line))
        except ValueError:
            continue
    return segments
