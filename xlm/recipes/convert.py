"""python -m xlm.recipes.convert --from SOURCE [--family F] [--format FMT] --to xlm|hf|LAYOUT --out DIR

SOURCE is a card name, a run/export dir, an HF model dir, a checkpoint file (with --family), or a
hub repo `hf://org/repo[@revision]` (its config.json and model.safetensors). Prints what was
mapped and what was dropped, then writes DIR in the target layout (`xlm`: model.safetensors +
config.json that xlm.load_model reads; `hf`: the HF transformers layout of the family; or a
converter's name such as `hf_llama` or `mdlm_reference`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Sequence

from xlm.assets.download import fetch, parse_hf_uri
from xlm.assets.loading import _card_or_path, _checkpoint_path, _is_run_dir, convert_checkpoint, detect_format
from xlm.errors import reports_user_errors
from xlm.interop.export import export
from xlm.registry import get_family
from xlm.run_dir import RunDirError, load_run_model, load_run_tokenizer


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
    p.add_argument("--family", default=None, help="needed for a bare checkpoint file")
    p.add_argument("--format", default=None, help="the source layout when it cannot be told, e.g. mdlm_reference")
    p.add_argument("--to", default="xlm", help="xlm | hf | a converter name")
    p.add_argument("--out", required=True, type=Path)
    args = p.parse_args(argv)
    if args.source.startswith("hf://"):
        card, path = None, _hub_dir(args.source)
    else:
        card, path = _card_or_path(args.source)
    family, fmt = args.family, args.format
    if card is not None:
        path = _checkpoint_path(card)
        family, fmt = family or card.model_family, fmt or card.checkpoint_format
    assert path is not None
    tokenizer = None
    if path.is_dir() and _is_run_dir(path):
        model = load_run_model(path)
        print(f"read {path} (xlm run dir)")
        try:
            tokenizer = load_run_tokenizer(path)
        except RunDirError:
            tokenizer = None
    else:
        family, fmt = detect_format(path, family, fmt)
        model, converted = convert_checkpoint(get_family(family), fmt, path)
        print(f"read {path} as {family}/{fmt}: {converted.summary()}")
    out = export(model, args.out, format=args.to, tokenizer=tokenizer)
    print(f"wrote {out} ({args.to})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
