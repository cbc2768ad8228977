"""Cross-check xlm's xlm-core converters against xlm-core 0.3.1 itself (github.com/dhruvdcoder/xlm-core).

    python scripts/cross_check_xlm_core.py                    # xlm-core's venv cached at ~/.cache/xlm/xlm-core-venv
    python scripts/cross_check_xlm_core.py --venv DIR --work-dir DIR --tolerance 1e-5

xlm-core's package is also named `xlm`, so it gets a venv of its own, made on first use (torch==2.13.0 first, then
xlm-core and xlm-models, which holds its model classes, from the package index), and runs in its own process
(scripts/xlm_core_side.py). There, each family's network (ARLM, MLM, ILM, MDLM) is built with xlm-core's own class,
trained a few steps in xlm-core's Harness with its EMA callback and saved twice: a Lightning .ckpt with EMA and a
hub export of the EMA weights; its outputs on fixed inputs are recorded. Here, for each family and format:

    xlm-core -> xlm   xlm.load_model(path) computes xlm-core's outputs (EMA weights for the .ckpt)
    xlm -> xlm-core   xlm.export(that model, dir, format="xlm_core"), loaded by xlm-core (from_pretrained,
                      strict), computes the xlm model's outputs

Outputs are compared at the real tokens (padding's columns are each side's own business). `family=` is passed only
where xlm says the checkpoint is ambiguous (the table's note says where). A family whose conversion xlm refuses on
purpose (ConversionError or ExportError) shows `refused: <reason>`; that passes only for the families given to
--allow-refused. Exit status 1 on any difference above the tolerance, any other refusal or error.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xlm.errors import XlmUserError, reports_user_errors

SIDE = Path(__file__).resolve().parent / "xlm_core_side.py"
XLM_CORE = ("xlm-core==0.3.1", "xlm-models==0.3.1")
TORCH = "torch==2.13.0"  # installed first: a looser requirement would pull a CUDA build
DEFAULT_VENV = Path.home() / ".cache" / "xlm" / "xlm-core-venv"
FORMATS = {"ckpt": "Lightning .ckpt + EMA", "hub": "hub export"}
DIRECTIONS = ("xlm-core -> xlm", "xlm -> xlm-core")


class CrossCheckError(XlmUserError, RuntimeError):
    """xlm-core's side could not be installed or run; the message has the command and the end of its output."""


@dataclass(frozen=True, kw_only=True)
class Check:
    """One family x format x direction: the largest difference of the outputs, or why there is none."""

    family: str
    format: str  # a key of FORMATS
    direction: str  # one of DIRECTIONS
    max_abs_diff: float | None = None
    refused: str | None = None  # xlm refused the conversion on purpose (ConversionError, ExportError)
    error: str | None = None  # anything else that went wrong
    note: str = ""


def verdict(check: Check, tolerance: float, allowed_refusals: Sequence[str]) -> str:
    """The check's verdict: "ok", "refused (allowed)" or "FAIL"."""
    if check.error is not None:
        return "FAIL"
    if check.refused is not None:
        return "refused (allowed)" if check.family in allowed_refusals else "FAIL"
    return "ok" if check.max_abs_diff is not None and check.max_abs_diff <= tolerance else "FAIL"


def failures(checks: Sequence[Check], tolerance: float, allowed_refusals: Sequence[str]) -> list[Check]:
    return [c for c in checks if verdict(c, tolerance, allowed_refusals) == "FAIL"]


def format_table(checks: Sequence[Check], tolerance: float, allowed_refusals: Sequence[str]) -> str:
    """A markdown table, one row per check; refusals and errors say why in the result column."""
    lines = [f"| family | format | direction | max abs diff (tolerance {tolerance:g}) | verdict |",
             "|---|---|---|---|---|"]
    for c in checks:
        if c.error is not None:
            result = f"error: {c.error}"
        elif c.refused is not None:
            result = f"refused: {c.refused}"
        else:
            result = "n/a" if c.max_abs_diff is None else f"{c.max_abs_diff:.2e}"
        lines.append(f"| {c.family} | {FORMATS[c.format]} | {c.direction} | {result} | "
                     f"{verdict(c, tolerance, allowed_refusals)} |")
    notes = [f"- {c.family}, {FORMATS[c.format]}, {c.direction}: {c.note}" for c in checks if c.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def max_abs_difference(ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor],
                       real: torch.Tensor) -> float:
    """The largest |ours - theirs| over every output; per-token outputs (batch, seq, ...) only where `real`
    (batch, seq) is True. A NaN anywhere compared counts as infinitely far."""
    if set(ours) != set(theirs):
        raise ValueError(f"the outputs differ in kind: {sorted(ours)} against {sorted(theirs)}")
    largest = 0.0
    for key, mine in ours.items():
        other = theirs[key]
        if mine.shape != other.shape:
            raise ValueError(f"output {key!r} has shape {tuple(mine.shape)} here and {tuple(other.shape)} there")
        if mine.shape[:2] == real.shape:
            mine, other = mine[real], other[real]
        difference = (mine.double() - other.double()).abs()
        largest = max(largest, float("inf") if bool(difference.isnan().any()) else float(difference.max()))
    return largest


def xlm_outputs(family: str, model: torch.nn.Module, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An xlm model's outputs on the inputs xlm-core's side fed its network, called the xlm way: the padding mask
    alone (xlm derives positions and ARLM's causal mask itself), MDLM with the total noise sigma."""
    ids, real = inputs["input_ids"], inputs["attention_mask"].bool()
    with torch.no_grad():
        if family == "ilm":
            out = model(ids, attention_mask=real)
            return {"logits": out.token_logits, "stop_logits": out.stop_logits}
        if family == "mdlm":
            return {"logits": model(ids, inputs["sigma"], attention_mask=real)}
        return {"logits": model(ids, attention_mask=real)}


def load_as_user_would(path: Path, family: str) -> tuple[torch.nn.Module, str]:
    """`xlm.load_model(path)`, and only when xlm says the checkpoint fits several families, again with `family=`;
    (model, a note saying so, else "")."""
    import xlm
    from xlm.interop.detect import FormatDetectionError

    try:
        return xlm.load_model(path), ""
    except FormatDetectionError as err:
        return xlm.load_model(path, family=family), f"family={family!r} given: {err}"


def _why_not(err: Exception) -> dict[str, str]:
    """A deliberate refusal (ConversionError, ExportError) as `refused`, anything else as `error`."""
    from xlm.errors import ConversionError
    from xlm.interop.export import ExportError

    kind = "refused" if isinstance(err, (ConversionError, ExportError)) else "error"
    return {kind: f"{type(err).__name__}: {err}" if kind == "error" else str(err)}


@dataclass(frozen=True, kw_only=True)
class Imported:
    """What the first direction leaves for the second: xlm's outputs and where it exported each model."""

    checks: list[Check]
    outputs: dict[tuple[str, str], dict[str, torch.Tensor]]
    exports: dict[str, dict[str, str]]


def check_imports(work: Path, manifest: Mapping[str, Any]) -> Imported:
    """xlm-core -> xlm for every family and format in xlm-core's manifest; each loaded model is exported to
    WORK/<family>/xlm_export_<format> for the way back."""
    import xlm
    from safetensors.torch import load_file

    checks, outputs, exports = [], {}, {}
    for family, entry in manifest["families"].items():
        inputs = load_file(work / entry["inputs"])
        for fmt, source in entry["sources"].items():
            where = {"family": family, "format": fmt, "direction": DIRECTIONS[0]}
            try:
                model, note = load_as_user_would(work / source, family)
                ours = xlm_outputs(family, model, inputs)
                diff = max_abs_difference(ours, load_file(work / entry["outputs"][fmt]), inputs["attention_mask"])
            except Exception as err:  # every failure is a row of the table
                checks.append(Check(**where, **_why_not(err)))
                continue
            checks.append(Check(**where, max_abs_diff=diff, note=note))
            outputs[family, fmt] = ours
            out = f"{family}/xlm_export_{fmt}"
            try:
                xlm.export(model, work / out, format="xlm_core")
            except Exception as err:
                checks.append(Check(family=family, format=fmt, direction=DIRECTIONS[1], **_why_not(err)))
                continue
            exports.setdefault(family, {})[fmt] = out
    return Imported(checks=checks, outputs=outputs, exports=exports)


def check_exports(work: Path, manifest: Mapping[str, Any], imported: Imported,
                  loaded: Mapping[str, Any]) -> list[Check]:
    """xlm -> xlm-core: what xlm-core computed with each export (WORK/loaded.json) against the xlm model's outputs.
    A family refused on the way in is refused on the way back for the same reason."""
    from safetensors.torch import load_file

    checks = []
    for family, entry in manifest["families"].items():
        real = load_file(work / entry["inputs"])["attention_mask"]
        for fmt in entry["sources"]:
            where = {"family": family, "format": fmt, "direction": DIRECTIONS[1]}
            if fmt not in imported.exports.get(family, {}):
                if (family, fmt) not in imported.outputs:  # refused or failed on the way in
                    first = next(c for c in imported.checks if (c.family, c.format) == (family, fmt))
                    checks.append(Check(**where, refused=first.refused, error=first.error))
                continue
            result = loaded[family][fmt]
            ignored = result["ignored_config_keys"]
            note = f"config.json keys xlm-core's class does not take: {ignored}" if ignored else ""
            diff = max_abs_difference(imported.outputs[family, fmt], load_file(work / result["outputs"]), real)
            checks.append(Check(**where, max_abs_diff=diff, note=note))
    return checks


def _clean_env() -> dict[str, str]:
    """The environment for xlm-core's processes: none of our paths, no network for the hub clients."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def _run(command: list[str], *, what: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(command, cwd=cwd, env=_clean_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise CrossCheckError(f"{what} failed (exit {proc.returncode}): {' '.join(command)}\n{tail}")


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_is_ready(venv: Path) -> bool:
    """The venv holds the pinned xlm-core and xlm-models."""
    python = venv_python(venv)
    if not python.is_file():
        return False
    names = tuple(requirement.split("==")[0] for requirement in XLM_CORE)
    probe = f"import importlib.metadata as m; print(*(f'{{n}}=={{m.version(n)}}' for n in {names!r}))"
    proc = subprocess.run([str(python), "-I", "-c", probe], env=_clean_env(), capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.split() == list(XLM_CORE)


def ensure_venv(venv: Path) -> float:
    """Makes (or completes) the venv unless it is ready; the seconds the install took (0 when reused)."""
    if venv_is_ready(venv):
        return 0.0
    start = time.perf_counter()
    if not venv_python(venv).is_file():
        _run([sys.executable, "-m", "venv", str(venv)], what=f"making the venv {venv}")
    pip = [str(venv_python(venv)), "-m", "pip", "install", "-q"]
    _run([*pip, TORCH], what=f"installing {TORCH} into {venv}")
    _run([*pip, *XLM_CORE], what=f"installing {' and '.join(XLM_CORE)} into {venv}")
    return time.perf_counter() - start


def run_side(venv: Path, phase: str, work: Path) -> float:
    """scripts/xlm_core_side.py PHASE WORK in xlm-core's venv, isolated (-I: neither PYTHONPATH nor the script's
    directory on its path); the seconds it took."""
    start = time.perf_counter()
    _run([str(venv_python(venv)), "-I", str(SIDE), phase, str(work)], what=f"xlm-core's side ({phase})", cwd=work)
    return time.perf_counter() - start


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=DEFAULT_VENV,
                        help="xlm-core's venv, made there on first use and reused after (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=None,
                        help="where the checkpoints, exports and outputs go (default: a temporary dir, removed "
                             "when every check passes)")
    parser.add_argument("--tolerance", type=float, default=1e-5, help="largest absolute difference allowed")
    parser.add_argument("--allow-refused", default="",
                        help="comma-separated families whose refusal by xlm passes (default: none)")
    return parser.parse_args(argv)


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    allowed = [f for f in args.allow_refused.split(",") if f]
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="xlm-core-cross-check-"))
    work.mkdir(parents=True, exist_ok=True)
    installed = ensure_venv(args.venv)
    made = run_side(args.venv, "make", work)
    manifest = json.loads((work / "manifest.json").read_text())
    start = time.perf_counter()
    imported = check_imports(work, manifest)
    ours = time.perf_counter() - start
    (work / "exports.json").write_text(json.dumps(imported.exports, indent=2))
    back = run_side(args.venv, "load", work)
    checks = imported.checks + check_exports(work, manifest, imported, json.loads((work / "loaded.json").read_text()))
    families = list(manifest["families"])
    checks.sort(key=lambda c: (families.index(c.family), list(FORMATS).index(c.format), DIRECTIONS.index(c.direction)))
    print(format_table(checks, args.tolerance, allowed))
    ema = ", ".join(f"{f} {e['ema_vs_raw']:.2g}" for f, e in manifest["families"].items())
    print(f"\nEMA against the raw weights, largest output difference in xlm-core: {ema}")
    print(f"seconds: venv {'reused' if not installed else f'installed in {installed:.0f}'}; xlm-core side "
          f"{made:.0f} (train, save, record) + {back:.0f} (load xlm's exports); xlm side {ours:.0f}")
    failed = failures(checks, args.tolerance, allowed)
    if failed:
        print(f"{len(failed)} check(s) failed; the files are in {work}")
        return 1
    if args.work_dir is None:
        shutil.rmtree(work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
