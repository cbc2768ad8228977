"""Cross-check xlm's xlm-core converters against xlm-core 0.3.1 itself (github.com/dhruvdcoder/xlm-core).

    python scripts/cross_check_xlm_core.py                    # xlm-core's venv cached at ~/.cache/xlm/xlm-core-venv
    python scripts/cross_check_xlm_core.py --venv DIR --work-dir DIR --tolerance 1e-5

xlm-core's package is also named `xlm`, so it gets a venv of its own, made on first use (scripts/xlm_core_venv.py,
shared with benchmarks/xlm_core_peer.py), and runs in its own process (scripts/xlm_core_side.py). There, each
family's network (ARLM, MLM, ILM, MDLM) is built with xlm-core's own class, trained a few steps in xlm-core's
Harness with its EMA callback and saved twice: a Lightning .ckpt with EMA and a hub export of the EMA weights;
its outputs on fixed inputs are recorded. Here, for each family and format:

    xlm-core -> xlm   xlm.load_model(path) computes xlm-core's outputs (EMA weights for the .ckpt)
    xlm -> xlm-core   xlm.export(that model, dir, format="xlm_core"), loaded by xlm-core (from_pretrained,
                      strict), computes the xlm model's outputs
    loss+grad         (ARLM, MLM, ILM) on batches xlm-core's own collators built, xlm's loss, with the settings
                      that match xlm-core's loss (`xlm_loss_settings`), on the hub export as xlm loads it computes
                      xlm-core's loss and its gradient for every parameter (mapped to xlm-core's names by the
                      family's converter); xlm's batch holds xlm-core's column for column (`xlm_batch`), and for
                      ILM xlm's own collator also builds one from the drops xlm-core's drew

Outputs are compared at the real tokens (padding's columns are each side's own business). `family=` is passed only
where xlm says the checkpoint is ambiguous (the table's note says where). Where xlm-core's objective has a bug, the
loss is compared where the two formulas agree, and the note says what was left out and what it changes. A family
whose conversion xlm refuses on purpose (ConversionError or ExportError) shows `refused: <reason>`; that passes only
for the families given to --allow-refused. Exit status 1 on any difference above the tolerance, any other refusal
or error.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from xlm.errors import InvalidValueError, XlmUserError, reports_user_errors

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # started as a file: the repository on the path, for scripts.xlm_core_venv
    sys.path.insert(0, _ROOT)
from scripts.xlm_core_venv import DEFAULT_VENV, ensure_venv, run_in_venv  # noqa: E402

SIDE = Path(__file__).resolve().parent / "xlm_core_side.py"
FORMATS = {"ckpt": "Lightning .ckpt + EMA", "hub": "hub export"}
DIRECTIONS = ("xlm-core -> xlm", "xlm -> xlm-core")
BATCHES = {"lm": "LM batch", "seq2seq": "seq2seq batch"}  # what the loss rows are computed on
SUBJECTS = {**FORMATS, **BATCHES}
LOSS_CHECK = "loss+grad"
#: what xlm.export adds to xlm-core's layout that is no parameter (and so has no gradient there)
XLM_CORE_BUFFERS = ("rotary_emb.inv_freq",)


class CrossCheckError(XlmUserError, RuntimeError):
    """xlm-core's side and xlm disagree on what both must share (the special token ids)."""


@dataclass(frozen=True, kw_only=True)
class Check:
    """One family x format x direction, or family x batch x loss check: the largest difference of the outputs (of the
    loss and every gradient), or why there is none."""

    family: str
    format: str  # a key of FORMATS, or of BATCHES for a loss row
    direction: str  # one of DIRECTIONS, or LOSS_CHECK and what sets the row apart
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
    lines = [f"| family | checkpoint or batch | check | max abs diff (tolerance {tolerance:g}) | verdict |",
             "|---|---|---|---|---|"]
    for c in checks:
        if c.error is not None:
            result = f"error: {c.error}"
        elif c.refused is not None:
            result = f"refused: {c.refused}"
        else:
            result = "n/a" if c.max_abs_diff is None else f"{c.max_abs_diff:.2e}"
        lines.append(f"| {c.family} | {SUBJECTS[c.format]} | {c.direction} | {result} | "
                     f"{verdict(c, tolerance, allowed_refusals)} |")
    notes = [f"- {c.family}, {SUBJECTS[c.format]}, {c.direction}: {c.note}" for c in checks if c.note]
    return "\n".join(lines + ([""] + notes if notes else []))


def table_order(families: Sequence[str]) -> Callable[[Check], tuple[int, ...]]:
    """The sort key of the table's rows: by family, each family's output rows by format and direction, then its
    loss rows (a stable sort keeps them in the order they were made)."""
    def key(c: Check) -> tuple[int, ...]:
        if c.direction in DIRECTIONS:
            return families.index(c.family), 0, list(FORMATS).index(c.format), DIRECTIONS.index(c.direction)
        return families.index(c.family), 1
    return key


def max_abs_difference(ours: Mapping[str, torch.Tensor], theirs: Mapping[str, torch.Tensor],
                       real: torch.Tensor | None = None) -> float:
    """The largest |ours - theirs| over every output; per-token outputs (batch, seq, ...) only where `real`
    (batch, seq) is True (everywhere without it). A NaN anywhere compared counts as infinitely far."""
    if set(ours) != set(theirs):
        raise ValueError(f"the outputs differ in kind: {sorted(ours)} against {sorted(theirs)}")
    largest = 0.0
    for key, mine in ours.items():
        other = theirs[key]
        if mine.shape != other.shape:
            raise ValueError(f"output {key!r} has shape {tuple(mine.shape)} here and {tuple(other.shape)} there")
        if real is not None and mine.shape[:2] == real.shape:
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


# -- loss and gradients on xlm-core's batches ----------------------------------------------------------------------

#: the arguments of each family's xlm-core loss class that xlm_loss_settings knows how to match
_LOSS_ARGUMENTS = {"arlm": (), "mlm": ("use_num_masked_factor", "loss_on_padding", "loss_on_visible_tokens"),
                   "ilm": ("length_loss", "length_loss_weight", "stopping_class_weight")}


def xlm_loss_settings(family: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of the family's xlm config that make xlm's loss the xlm-core loss class given `arguments`:
    ARLMLoss has none; MLMLoss's use_num_masked_factor is loss_weighting="num_masked_factor" (loss_on_padding acts in
    its collator only); ILMLossWithMaskedCE's binary stop loss normalises over every attended column but [CLS]
    (insertion_gaps="attended") and weighs the stop loss by length_loss_weight (1 when None) with its classes
    weighted by stopping_class_weight."""
    unknown = sorted(set(arguments) - set(_LOSS_ARGUMENTS.get(family, ())))
    if family not in _LOSS_ARGUMENTS or unknown:
        raise InvalidValueError(f"no xlm loss settings for xlm-core's {family} loss with {unknown or 'any'} "
                                f"arguments; known: {_LOSS_ARGUMENTS}")
    if family == "mlm":
        if arguments.get("loss_on_visible_tokens"):
            raise InvalidValueError("xlm's MLM loss covers the masked positions only: xlm-core's "
                                    "loss_on_visible_tokens=True has no xlm setting")
        return {"loss_weighting": "num_masked_factor" if arguments.get("use_num_masked_factor") else "none"}
    if family == "ilm":
        if arguments.get("length_loss") != "binary_ce":
            raise InvalidValueError(f"xlm's ILM stop head is binary: xlm-core's "
                                    f"length_loss={arguments.get('length_loss')!r} has no xlm setting (only "
                                    "'binary_ce' has)")
        weight = arguments.get("length_loss_weight")
        return {"insertion_gaps": "attended", "stop_loss_weight": 1.0 if weight is None else weight,
                "stopping_class_weight": arguments.get("stopping_class_weight")}
    return {}


def xlm_batch(family: str, batch: Mapping[str, torch.Tensor], token_ids: Mapping[str, int]) -> dict[str, torch.Tensor]:
    """xlm's training batch holding xlm-core's collated `batch` column for column (xlm's positions and attention
    follow from the padding mask as xlm-core's losses compute them, so its left padding and [CLS] column stay):

    ARLM  labels are xlm-core's target_ids (already shifted; -100 is xlm's IGNORE_INDEX too)
    MLM   the loss covers the columns whose input is [MASK], as MLMLoss's does; `maskable` and `t` are left out:
          only the inverse_t weighting reads them, and xlm-core has none
    ILM   the dense (batch, seq, vocab) drop counts become xlm's sparse targets, each weighing its count over the
          row's drops (n_drops); the gaps of the target are the attended columns from the row's [BOS] on; and the
          stop head reads [CLS] at cls_position
    """
    ids, attended = batch["input_ids"], batch["attention_mask"].bool()
    if family == "arlm":
        from xlm.models.arlm.collators import IGNORE_INDEX

        labels = batch["target_ids"].masked_fill(batch["target_ids"] == -100, IGNORE_INDEX)
        return {"input_ids": ids, "attention_mask": attended, "labels": labels}
    if family == "mlm":
        return {"input_ids": ids, "attention_mask": attended, "target_ids": batch["target_ids"],
                "masked": ids == token_ids["mask"]}
    if family != "ilm":
        raise InvalidValueError(f"no batch adapter for {family}: ARLM, MLM and ILM have one")
    counts = batch["target_ids"]
    rows, cols, tokens = counts.nonzero(as_tuple=True)
    num_dropped = batch["n_drops"].sum(-1).long()
    bos_column = (ids == token_ids["bos"]).long().argmax(-1)
    gap_mask = attended & (torch.arange(ids.size(1))[None, :] >= bos_column[:, None])
    return {"input_ids": ids, "attention_mask": attended, "gap_mask": gap_mask, "target_rows": rows,
            "target_cols": cols, "target_tokens": tokens,
            "target_weights": counts[rows, cols, tokens].float() / num_dropped[rows], "num_dropped": num_dropped,
            "cls_position": batch["cls_position"]}


def ilm_batch_from_drops(examples: Sequence[Mapping[str, Sequence[int]]], drops: Sequence[Sequence[int]],
                         tokenizer: Any, max_len: int) -> dict[str, torch.Tensor]:
    """xlm's own ILM collator on xlm-core's examples with the drops xlm-core's collator drew: its layout ([CLS] in
    column 0, the prompt padded after it), the same rows, tokens and gaps."""
    from xlm.models.ilm.collators import IlmLMCollator, IlmSeq2SeqCollator

    if "prompt_ids" in examples[0]:  # xlm-core's seq2seq rows hold the target in input_ids
        ours = [{"prompt_ids": ex["prompt_ids"], "target_ids": ex["input_ids"]} for ex in examples]
        return IlmSeq2SeqCollator(tokenizer, max_len=max_len)(ours, drops=drops)
    return IlmLMCollator(tokenizer, max_len=max_len)(examples, drops=drops)


def xlm_core_tokenizer(vocab_size: int, token_ids: Mapping[str, int]) -> Any:
    """xlm's WordTokenizer over number words, whose special ids are xlm-core's; an error where the run's differ."""
    from xlm.data.tokenizers import SPECIAL_TOKENS, WordTokenizer

    tokenizer = WordTokenizer([str(i) for i in range(vocab_size - len(SPECIAL_TOKENS))])
    ours = {name: getattr(tokenizer, f"{name}_token_id") for name in token_ids}
    if ours != dict(token_ids):
        raise CrossCheckError(f"xlm-core's side used the special ids {dict(token_ids)}; xlm's WordTokenizer has {ours}")
    return tokenizer


def xlm_loss_and_gradients(unit: Any, model: torch.nn.Module, batch: Mapping[str, torch.Tensor],
                           from_xlm: Any) -> dict[str, torch.Tensor]:
    """The unit's loss on the batch and its gradient for every parameter (zero where none flows), under xlm-core's
    names: `from_xlm` maps the gradients as it maps a state dict; the buffers it adds are no parameters there."""
    model.zero_grad(set_to_none=True)
    loss = unit.loss(model, batch)["loss"]
    loss.backward()
    gradients = {k: torch.zeros_like(p) if p.grad is None else p.grad for k, p in model.named_parameters()}
    theirs = from_xlm(gradients, model.config).state
    return {"loss": loss.detach(), **{k: v for k, v in theirs.items() if not k.endswith(XLM_CORE_BUFFERS)}}


def recorded_loss(work: Path, part: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """xlm-core's loss and gradients for one part of a case (the files xlm_core_side.py wrote)."""
    from safetensors.torch import load_file

    return {"loss": torch.tensor(part["loss"]), **load_file(work / part["gradients"])}


def loss_check_name(case: Mapping[str, Any]) -> str:
    """LOSS_CHECK and the loss's switches that are on ("loss+grad, use_num_masked_factor")."""
    return LOSS_CHECK + "".join(f", {k}" for k, v in case["arguments"].items() if v is True)


def loss_notes(family: str, case: Mapping[str, Any], settings: Mapping[str, Any]) -> list[str]:
    """What the row compares, and where it compares part of what xlm-core computes."""
    arguments = ", ".join(f"{k}={v!r}" for k, v in case["arguments"].items())
    ours = ", ".join(f"{k}={v!r}" for k, v in settings.items()) or "its defaults"
    notes = [f"xlm-core {case['loss_class']}({arguments}) against xlm's loss with {ours}"]
    if family == "arlm" and case["batch"] == "seq2seq":
        notes.append("the labels cover the prompt, as ARLMSeq2SeqCollator's do")
    if case["one_row_per_batch"]:
        notes.append(f"xlm-core's factor multiplies the (batch, seq) cross-entropy by a (batch,) factor, along the "
                     f"sequence ({case['whole_batch']}): each of the {len(case['parts'])} rows compared as a batch of "
                     "its own, where it is the row's factor")
    if "as_collated" in case:
        notes.append(f"ARLMSeq2SeqCollator labels the last left pad of {case['labels_at_padding']} rows (its -100 "
                     "rule looks at the next column only), a query that attends to nothing (xlm-core's attention "
                     "gives it zeros, xlm's lets it see itself): compared without those labels")
    return notes


def check_loss_case(work: Path, family: str, hub: Path, case: Mapping[str, Any],
                    token_ids: Mapping[str, int]) -> list[Check]:
    """One case xlm-core's side recorded: the hub export as xlm loads it, with the settings of xlm-core's loss,
    through the family's unit (the loss the trainer calls), in eval mode as on xlm-core's side; ILM's case again on
    the batch xlm's collator builds from xlm-core's drops."""
    import dataclasses

    from safetensors.torch import load_file

    from xlm.registry import get_family

    spec = get_family(family)
    settings = xlm_loss_settings(family, case["arguments"])
    model, _ = load_as_user_would(hub, family)
    model.config = dataclasses.replace(model.config, **settings)
    tokenizer = xlm_core_tokenizer(model.config.vocab_size, token_ids)
    unit = spec.unit_factory(model.eval(), tokenizer, spec.sampler_config_class())
    from_xlm = spec.converters["xlm_core"].from_xlm

    def difference(batch: Mapping[str, torch.Tensor], part: Mapping[str, Any]) -> float:
        return max_abs_difference(xlm_loss_and_gradients(unit, model, batch, from_xlm), recorded_loss(work, part))

    def adapted(part: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return xlm_batch(family, load_file(work / part["batch"]), token_ids)

    where = {"family": family, "format": case["batch"], "direction": loss_check_name(case)}
    notes = loss_notes(family, case, settings)
    if "as_collated" in case:
        whole = case["as_collated"]
        ours = xlm_loss_and_gradients(unit, model, adapted(whole), from_xlm)
        theirs = recorded_loss(work, whole)
        loss = max_abs_difference({"loss": ours.pop("loss")}, {"loss": theirs.pop("loss")})
        gradients = max_abs_difference(ours, theirs)
        notes.append(f"with them the loss differs by {loss:.2g}, the gradients by {gradients:.2g}")
    largest = max(float(g.abs().max()) for part in case["parts"] for g in load_file(work / part["gradients"]).values())
    losses = ", ".join(f"{part['loss']:.4f}" for part in case["parts"])
    notes.append(f"xlm-core's loss {losses}, largest |gradient| {largest:.2g}")
    checks = [Check(**where, max_abs_diff=max(difference(adapted(part), part) for part in case["parts"]),
                    note="; ".join(notes))]
    if family == "ilm":
        [part] = case["parts"]
        ours = ilm_batch_from_drops(case["examples"], case["drops"], tokenizer, model.config.max_seq_len)
        note = f"xlm's layout ([CLS] in column 0, the prompt padded after it); drops {case['drops']}"
        checks.append(Check(**{**where, "direction": f"{where['direction']}, xlm's collator with xlm-core's drops"},
                            max_abs_diff=difference(ours, part), note=note))
    return checks


def check_losses(work: Path, manifest: Mapping[str, Any]) -> list[Check]:
    """loss+grad rows for every case xlm-core's side recorded (manifest "losses"); a case that fails is a row."""
    checks = []
    for family, entry in manifest["families"].items():
        for case in entry.get("losses", []):
            try:
                checks += check_loss_case(work, family, work / entry["sources"]["hub"], case, manifest["token_ids"])
            except Exception as err:  # every failure is a row of the table
                checks.append(Check(family=family, format=case["batch"], direction=loss_check_name(case),
                                    **_why_not(err)))
    return checks


def run_side(venv: Path, phase: str, work: Path) -> float:
    """scripts/xlm_core_side.py PHASE WORK in xlm-core's venv; the seconds it took."""
    return run_in_venv(venv, SIDE, [phase, str(work)], what=f"xlm-core's side ({phase})", cwd=work)


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
    start = time.perf_counter()
    checks += check_losses(work, manifest)
    ours += time.perf_counter() - start
    checks.sort(key=table_order(list(manifest["families"])))
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
