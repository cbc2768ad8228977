"""xlm-scaffold NAME [--output-dir DIR] [--models-file FILE] [--dry-run] [--force]

Creates NAME/ (the package NAME/NAME/, configs/, pyproject.toml, README.md) holding a small model
family that trains as it stands, and declares it in the models file (default
DIR/xlm_models.json; by its absolute path when NAME/ is not below the file's directory) so xlm
discovers it. Writes nothing outside NAME/ but that one entry; refuses to overwrite files inside
NAME/ without --force.
"""

from __future__ import annotations

import argparse
import json
import keyword
import os
import re
import sys
from pathlib import Path
from collections.abc import Sequence

from xlm.errors import XlmUserError, reports_user_errors

from .discovery import CORE_FAMILIES, LEGACY_MODELS_FILE

TEMPLATES = Path(__file__).parent / "templates"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


class ScaffoldError(XlmUserError, ValueError):
    """The scaffold cannot be written as asked."""


def check_name(name: str) -> None:
    if not NAME_PATTERN.match(name):
        raise ScaffoldError(f"model name {name!r} must match {NAME_PATTERN.pattern} (lowercase letters, digits, "
                            f"underscores; a letter first), e.g. my_model")
    if name in CORE_FAMILIES or keyword.iskeyword(name) or name in sys.stdlib_module_names or name == "xlm":
        raise ScaffoldError(f"model name {name!r} is taken (a core xlm family, a Python keyword or a standard "
                            f"library module); choose another")


def class_name(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


def render(name: str) -> dict[Path, str]:
    """Relative path inside NAME/ -> file content."""
    out: dict[Path, str] = {}
    for template in sorted(TEMPLATES.rglob("*.tmpl")):
        rel = template.relative_to(TEMPLATES).with_suffix("")
        parts = [name if p == "package" else p.replace("__NAME__", name) for p in rel.parts]
        text = template.read_text().replace("__CLASS__", class_name(name)).replace("__NAME__", name)
        out[Path(*parts)] = text
    return out


def _models_file_update(models_file: Path, name: str, root: Path) -> str:
    """The models file's new content, with NAME pointing at root: relative inside the file's directory,
    else absolute (discovery refuses a relative path that leads out of it)."""
    rel = os.path.relpath(root, models_file.parent.resolve())
    if rel == ".." or rel.startswith(".." + os.sep):
        rel = str(root)
    if models_file.name == LEGACY_MODELS_FILE:
        if rel != name:
            raise ScaffoldError(f"{models_file} lists names only, so the model must sit beside it; "
                                f"use an xlm_models.json instead")
        lines = models_file.read_text().splitlines() if models_file.exists() else []
        names = [line.split("#", 1)[0].strip() for line in lines]
        return "\n".join(lines + ([] if name in names else [name])) + "\n"
    try:
        entries = json.loads(models_file.read_text()) if models_file.exists() else {}
    except json.JSONDecodeError as err:
        raise ScaffoldError(f"{models_file} is not valid JSON ({err}); fix it, or pass --models-file") from err
    if entries.get(name, rel) != rel:
        raise ScaffoldError(f"{models_file} already maps {name!r} to {entries[name]!r}; remove that entry or choose "
                            f"another name")
    entries[name] = rel
    return json.dumps(entries, indent=2) + "\n"


def scaffold(name: str, output_dir: Path, *, models_file: Path | None = None, dry_run: bool = False,
             force: bool = False) -> list[Path]:
    """The files written (or, with dry_run, that would be)."""
    check_name(name)
    root = output_dir.resolve() / name
    files = {root / rel: text for rel, text in render(name).items()}
    existing = sorted(p for p in files if p.exists())
    if existing and not force:
        raise ScaffoldError(f"{len(existing)} file(s) already exist in {root}, e.g. {existing[0]}; pass --force "
                            f"to overwrite them")
    models_file = (models_file or output_dir / "xlm_models.json").resolve()
    models_text = _models_file_update(models_file, name, root)
    if dry_run:
        return [*files, models_file]
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    models_file.parent.mkdir(parents=True, exist_ok=True)
    models_file.write_text(models_text)
    return [*files, models_file]


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xlm-scaffold", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name")
    p.add_argument("--output-dir", type=Path, default=Path("."))
    p.add_argument("--models-file", type=Path, default=None,
                   help="xlm_models.json (or a legacy .xlm_models) to declare the model in")
    p.add_argument("--dry-run", action="store_true", help="print what would be written; write nothing")
    p.add_argument("--force", action="store_true", help="overwrite existing files inside NAME/")
    args = p.parse_args(argv)
    written = scaffold(args.name, args.output_dir, models_file=args.models_file, dry_run=args.dry_run,
                       force=args.force)
    verb = "would write" if args.dry_run else "wrote"
    for path in written:
        print(f"{verb} {path}")
    if not args.dry_run:
        print(f"\nnext: xlm train --arch {args.name}_tiny --task star_easy --experiment {args.name}_debug")
    return 0


if __name__ == "__main__":
    sys.exit(main())
