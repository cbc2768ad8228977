"""python -m xlm.recipes.generate --model NAME_OR_DIR [--checkpoint step_N|last] (--prompt TEXT ... |
--prompts-file F) [--num-samples N] [--seed S] [--trace] [--trace-html FILE] [sampler.key=value ...]

Prints each prompt's completions, and warns about a prompt that does not look like those of the task
the model was trained on. --trace shows, step by step, how the sampler built the first sample (the
tokens each step wrote, appended, unmasked or inserted, in {braces}); --trace-html writes a page that
replays every sample's steps. For a model that fills masks (mlm, e.g. an HF BERT dir), a prompt holding
its mask token is printed with the masks filled, as transformers' fill-mask pipeline does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Sequence

from xlm.data.tasks import prompt_problem
from xlm.data.tasks.text import first_bad_utf8
from xlm.data.tokenizers import MissingSpecialTokenError, UnknownTokenError, optional_token_id
from xlm.errors import InvalidValueError, PathNotFoundError, reports_user_errors
from xlm.io import replace_file
from xlm.trace import NEW, TracedSample, TraceStep, text_trace, trace_page

from .distributed import resolve_device
from .evaluate import _parse_sampler_overrides
from .model_source import load_for_command


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xlm generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a card name, run dir, export dir or HF model dir")
    p.add_argument("--checkpoint", default=None,
                   help="step_N or last: that checkpoint of the run (finished or not) instead of its final model")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    src.add_argument("--prompts-file", type=Path, help="one prompt per line")
    p.add_argument("--num-samples", type=int, default=1, help="completions per prompt")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--trace", action="store_true", help="print the steps of the first sample")
    p.add_argument("--trace-html", type=Path, default=None, help="write a page replaying every sample's steps")
    p.add_argument("--device", default="cpu")
    p.add_argument("sampler", nargs="*", help="sampler overrides, e.g. sampler.strategy=sample sampler.top_p=0.9")
    return p.parse_intermixed_args(argv)


def read_prompts(path: Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file."""
    if path.is_dir():
        raise InvalidValueError(f"--prompts-file {path} is a directory; give a text file with one prompt a line")
    if not path.is_file():
        raise PathNotFoundError(f"--prompts-file {path} does not exist")
    if bad := first_bad_utf8([str(path)], "prompt files"):
        raise InvalidValueError(f"--prompts-file {bad}")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.num_samples < 1:
        raise InvalidValueError(f"--num-samples must be at least 1, got {args.num_samples}")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        raise InvalidValueError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.trace_html is not None and args.trace_html.is_dir():
        raise InvalidValueError(f"--trace-html {args.trace_html} is a directory; give a file name, e.g. "
                                f"{args.trace_html / 'trace.html'}")
    prompts = args.prompt or read_prompts(args.prompts_file)
    if not prompts:
        raise InvalidValueError(f"--prompts-file {args.prompts_file} holds no prompt (one a line)")
    loaded = load_for_command(args.model, checkpoint=args.checkpoint,
                              device=resolve_device(args.device, option="--device"),
                              sampling=_parse_sampler_overrides(args.sampler))
    if loaded.checkpoint:
        print(f"model: {loaded.label}", file=sys.stderr)
    task = (loaded.run_config or {}).get("task")
    generator = loaded.generator()
    tokenizer = generator.tokenizer
    traces: list[TracedSample] = []
    mask = optional_token_id(tokenizer, "mask") if generator.can_fill_masks() else None
    for p_index, prompt in enumerate(prompts):
        if task and (problem := prompt_problem(task, prompt)):
            print(f"warning: prompt {p_index + 1}: {problem}", file=sys.stderr)
        for sample in range(args.num_samples):
            steps: list[TraceStep] = []
            record = steps.append if (args.trace or args.trace_html) else None
            try:
                if mask is not None and mask in tokenizer.encode(prompt):
                    (text,) = generator.fill_masks([prompt], seed=args.seed + sample, on_step=record)
                else:
                    (text,) = generator.generate([prompt], max_new_tokens=args.max_new_tokens,
                                                 seed=args.seed + sample, on_step=record)
            except UnknownTokenError as err:  # say which prompt
                raise UnknownTokenError(f"prompt {p_index + 1}: {err}", err.words, err.positions) from None
            except MissingSpecialTokenError as err:  # BERT's own tokenizer has no [BOS] to continue a prompt after
                if mask is None:
                    raise InvalidValueError(f"prompt {p_index + 1}: {err}") from None
                word = tokenizer.decode([mask], skip_special_tokens=False)
                raise InvalidValueError(f"prompt {p_index + 1} has no {word} to fill, and this model continues no "
                                        f"prompt (its tokenizer has no [BOS] to start a continuation after): write "
                                        f"{word} where a token should go") from None
            except InvalidValueError as err:  # e.g. prompt + --max-new-tokens longer than the model's context
                raise InvalidValueError(f"prompt {p_index + 1}: {err}") from None
            print(f"[{p_index + 1}.{sample + 1}] {prompt}\n    -> {text}")
            traced = TracedSample(label=f"prompt {p_index + 1}, sample {sample + 1}: {prompt}",
                                  prompt_ids=tokenizer.encode(prompt), steps=steps)
            if args.trace and p_index == 0 and sample == 0:
                print(f"    trace of [1.1], the tokens each step wrote in {NEW[0]}braces{NEW[1]}:")
                for line in text_trace(tokenizer, traced):
                    print(f"    {line}")
            traces.append(traced)
    if args.trace_html:
        args.trace_html.parent.mkdir(parents=True, exist_ok=True)
        replace_file(args.trace_html, trace_page(tokenizer, f"xlm generate: {loaded.label}", traces))
        print(f"wrote {args.trace_html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
