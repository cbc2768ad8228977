"""Small text corpora that every machine already has, for tests and quick text-task runs.

`pydoc_corpus` writes the prose of CPython's own reference help (the `pydoc_data.topics` module
shipped with every CPython: ~1,800 paragraphs, ~400 kB of English with code) one paragraph per
line, so `--task text task.data_files=...` runs offline anywhere.

    python -m xlm.data.corpora pydoc corpus.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from xlm.errors import reports_user_errors


def pydoc_paragraphs(min_words: int = 8) -> list[str]:
    from pydoc_data.topics import topics

    paragraphs = (re.sub(r"\s+", " ", p).strip() for name in sorted(topics) for p in topics[name].split("\n\n"))
    return list(dict.fromkeys(p for p in paragraphs if len(p.split()) >= min_words))  # distinct, in order


def pydoc_corpus(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(pydoc_paragraphs()) + "\n", encoding="utf-8")
    return path


@reports_user_errors
def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "pydoc":
        print("usage: python -m xlm.data.corpora pydoc OUTPUT.txt", file=sys.stderr)
        return 2
    out = pydoc_corpus(args[1])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
