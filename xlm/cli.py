"""`xlm` command: xlm train | eval | models. Each subcommand is its recipe's module."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from xlm.errors import reports_user_errors

USAGE = """usage: xlm COMMAND [ARGS]

commands:
  train    train a model        (python -m xlm.recipes.train)
  eval     evaluate a model     (python -m xlm.recipes.evaluate)
  convert  convert a checkpoint between layouts (python -m xlm.recipes.convert)
  compare  train several archs with one budget and tabulate/plot them (python -m xlm.recipes.compare)
  generate complete prompts, optionally tracing each step (python -m xlm.recipes.generate)
  train-tokenizer  train a SentencePiece tokenizer on a corpus (python -m xlm.recipes.train_tokenizer)
  models   list model families, where each came from, and their archs
  cards    list | show NAME | add RUN_DIR --name NAME | download NAME | pin NAME   (asset cards)
"""


def _models(argv: Sequence[str]) -> int:
    """xlm models [list]: every family, where it came from, and its archs; a broken declaration is an error."""
    import xlm
    from xlm.registry import families

    if argv not in ([], ["list"]):
        print("usage: xlm models [list]", file=sys.stderr)
        return 2
    xlm.load_external_models()
    for name in xlm.list_families():
        family = families.get(name)
        print(f"{name}  [{family.source}]\n    archs: {', '.join(family.archs.names())}")
    return 0


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "train":
        from xlm.recipes.train import main as run
    elif command == "eval":
        from xlm.recipes.evaluate import main as run
    elif command == "train-tokenizer":
        from xlm.recipes.train_tokenizer import main as run
    elif command == "convert":
        from xlm.recipes.convert import main as run
    elif command == "compare":
        from xlm.recipes.compare import main as run
    elif command == "generate":
        from xlm.recipes.generate import main as run
    elif command == "cards":
        from xlm.assets.cli import main as run
    elif command == "models":
        run = _models
    else:
        import difflib

        commands = ["train", "eval", "convert", "compare", "generate", "train-tokenizer", "models", "cards"]
        close = difflib.get_close_matches(command, commands, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"xlm: unknown command {command!r}{hint}\n\n{USAGE}", file=sys.stderr, end="")
        return 2
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
