"""python -m xlm.recipes.convert --from SOURCE [--family F] [--format FMT] [--checkpoint step_N|last]
--to xlm|hf|LAYOUT --out DIR

SOURCE is a card name, a run/export dir (with --checkpoint, one of a run's checkpoints), an HF model
dir, a checkpoint file (its layout recognised, or told with --family and --format), or a hub repo
`hf://org/repo[@revision]` (its config.json and model.safetensors). Prints what was mapped and what
was dropped, then writes DIR in the target layout (`xlm`: model.safetensors + config.json that
xlm.load_model reads; `hf`: the HF transformers layout of the family; or a converter's name such as
`hf_llama` or `mdlm_reference`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

from xlm.assets.download import fetch, parse_hf_uri
from xlm.assets.loading import resolve_source, sampler_config_for, source_model, source_tokenizer
from xlm.errors import reports_user_errors
from xlm.interop.convert import convert_checkpoint
from xlm.interop.export import check_export_dir, export
from xlm.registry import get_family
from xlm.run_dir import RunDirError, read_run_config

from .model_source import load_for_command, refuse_unfinished_run, split_checkpoint_path


def _hub_dir(uri: str) -> Path:
    location = parse_hf_uri(uri.rstrip("/") + "/config.json")
    base = f"hf://{location.repo_id}{'@' + location.revision if location.revision else ''}"
    fetch(f"{base}/config.json")
    return fetch(f"{base}/model.safetensors").parent


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="xlm convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--from", dest="source", required=True)
    p.add_argument("--family", default=None, help="the source's family, when its layout does not tell")
    p.add_argument("--format", default=None, help="the source layout when it cannot be told, e.g. xlm_core")
    p.add_argument("--to", default="xlm", help="xlm | hf | a converter name")
    p.add_argument("--out", required=True, type=Path, help="a new or empty directory (see --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a directory that already holds files: the written ones are replaced, "
                        "the others kept")
    p.add_argument("--checkpoint", default=None,
                   help="step_N or last: convert that checkpoint of a run (finished or not), not its final model")
    args = p.parse_args(argv)
    check_export_dir(args.out, overwrite=args.overwrite)  # before reading or downloading the source
    before = _inodes(args.out)
    by_path = split_checkpoint_path(args.source)[1] is not None  # a run's checkpoint given by its path
    if args.checkpoint is not None or by_path:
        loaded = load_for_command(args.source, checkpoint=args.checkpoint)
        print(f"read {loaded.label}")
        out = export(loaded.model, args.out, format=args.to, tokenizer=loaded.tokenizer,
                     sampler_config=loaded.sampler_config, overwrite=args.overwrite, **_run_fields(loaded.run_config))
        _report_written(out, args.to, before)
        return 0
    refuse_unfinished_run(args.source)
    source = resolve_source(_hub_dir(args.source) if args.source.startswith("hf://") else args.source,
                            family=args.family, checkpoint_format=args.format)
    family = get_family(source.family)
    if source.is_run_dir:
        model = source_model(source)
        print(f"read {source.path} (xlm run dir)")
    else:
        model, converted = convert_checkpoint(family, source.fmt, source.path)
        print(f"read {source.path} as {source.family}/{source.fmt}: {converted.summary()}")
    try:  # the run's tokenizer, or an HF dir's own: the written dir generates as the source does
        tokenizer = source_tokenizer(source)
    except RunDirError:
        tokenizer = None
    run = _run_fields(read_run_config(source.path)) if source.is_run_dir else {}
    out = export(model, args.out, format=args.to, tokenizer=tokenizer,
                 sampler_config=sampler_config_for(source, family, {}), overwrite=args.overwrite, **run)
    _report_written(out, args.to, before)
    return 0


def _run_fields(run_config: Mapping[str, Any] | None) -> dict[str, Any]:
    """What an xlm run records about itself beyond the model, kept by an export in xlm's format: its arch, and the
    task (with its settings) that `xlm eval` scores it on."""
    if not run_config:
        return {}
    return {key: run_config.get(key) for key in ("arch", "task", "train_config")}


def _inodes(directory: Path) -> dict[str, int]:
    return {p.name: p.stat().st_ino for p in directory.iterdir()} if directory.is_dir() else {}


def _report_written(out: Path, layout: str, before: dict[str, int]) -> None:
    """Names the files that were there and still are (an export replaces files by renaming new ones in)."""
    print(f"wrote {out} ({layout})")
    kept = sorted(name for name, inode in _inodes(out).items() if before.get(name) == inode)
    if kept:
        print(f"kept in {out}, not written by this export: {', '.join(kept)}")


if __name__ == "__main__":
    sys.exit(main())
