"""python -m xlm.recipes.generate --model NAME_OR_DIR (--prompt TEXT ... | --prompts-file F)
[--num-samples N] [--seed S] [--trace] [--trace-html FILE] [sampler.key=value ...]

Prints each prompt's completions. --trace shows, step by step, how the sampler built the first
sample (new tokens in [brackets]: appended, unmasked or inserted); --trace-html writes a page
that replays every sample's steps.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
from pathlib import Path
from collections.abc import Sequence

from xlm.data.tokenizers import Tokenizer, UnknownTokenError
from xlm.errors import PathNotFoundError, reports_user_errors
from xlm.trace import TraceStep

from .evaluate import _parse_sampler_overrides


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xlm generate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a card name, run dir or export dir")
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


def token_strings(tokenizer: Tokenizer, row: Sequence[int]) -> list[str]:
    return [tokenizer.decode([t], skip_special_tokens=False) for t in row]


def format_step(tokenizer: Tokenizer, step: TraceStep, row: int, pad_id: int) -> str:
    """One row of one step as text, written tokens in brackets, padding left out."""
    changed = set(step["changed"][row])
    words = [f"[{w}]" if i in changed else w
             for i, (t, w) in enumerate(zip(step["rows"][row], token_strings(tokenizer, step["rows"][row])))
             if t != pad_id or i in changed]
    return " ".join(words)


def trace_page(tokenizer: Tokenizer, title: str, traces: list[tuple[str, list[TraceStep], int]]) -> str:
    """A self-contained page: per sample, a slider over its steps (no external scripts)."""
    samples = []
    for label, steps, row in traces:
        frames = [{"step": s["step"],
                   "tokens": [w for t, w in zip(s["rows"][row], token_strings(tokenizer, s["rows"][row]))
                              if t != tokenizer.pad_token_id],
                   "changed": [sum(1 for t in s["rows"][row][:i] if t != tokenizer.pad_token_id)
                               for i in s["changed"][row]]} for s in steps]
        samples.append({"label": label, "frames": frames})
    data = json.dumps(samples).replace("</", "<\\/")
    return f"""<!doctype html><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} .tok{{display:inline-block;margin:2px;padding:2px 4px;
border-radius:3px;background:#eee;font-family:monospace}} .new{{background:#ffd54f}}
.sample{{margin-bottom:2em}}</style>
<h1>{html.escape(title)}</h1><div id="root"></div>
<script>
const samples = {data};
const root = document.getElementById("root");
samples.forEach((s) => {{
  const box = document.createElement("div"); box.className = "sample";
  const head = document.createElement("h3"); head.textContent = s.label; box.appendChild(head);
  const slider = document.createElement("input"); slider.type = "range"; slider.min = 0;
  slider.max = Math.max(s.frames.length - 1, 0); slider.value = slider.max;
  const info = document.createElement("div"); const line = document.createElement("div");
  function show(i) {{
    const f = s.frames[i]; if (!f) return;
    info.textContent = `step ${{f.step}} (${{Number(i) + 1}} of ${{s.frames.length}})`;
    line.innerHTML = "";
    f.tokens.forEach((t, j) => {{ const span = document.createElement("span");
      span.className = "tok" + (f.changed.includes(j) ? " new" : ""); span.textContent = t; line.appendChild(span); }});
  }}
  slider.oninput = () => show(slider.value); box.append(slider, info, line); root.appendChild(box); show(slider.max);
}});
</script>
"""


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import xlm

    if args.prompts_file is not None and not args.prompts_file.is_file():
        raise PathNotFoundError(f"--prompts-file {args.prompts_file} does not exist")
    prompts = args.prompt or [line.rstrip("\n") for line in args.prompts_file.read_text().splitlines() if line.strip()]
    generator = xlm.load_generator(args.model, device=args.device, **_parse_sampler_overrides(args.sampler))
    tokenizer = generator.tokenizer
    traces: list[tuple[str, list[TraceStep], int]] = []
    for p_index, prompt in enumerate(prompts):
        for sample in range(args.num_samples):
            steps: list[TraceStep] = []
            record = steps.append if (args.trace or args.trace_html) else None
            try:
                (text,) = generator.generate([prompt], max_new_tokens=args.max_new_tokens,
                                             seed=args.seed + sample, on_step=record)
            except UnknownTokenError as err:  # say which prompt
                raise UnknownTokenError(f"prompt {p_index + 1}: {err}", err.words, err.positions) from None
            print(f"[{p_index + 1}.{sample + 1}] {prompt}\n    -> {text}")
            if args.trace and p_index == 0 and sample == 0:
                for step in steps:
                    print(f"    step {step['step']:>4}: {format_step(tokenizer, step, 0, tokenizer.pad_token_id)}")
            traces.append((f"prompt {p_index + 1}, sample {sample + 1}: {prompt}", steps, 0))
    if args.trace_html:
        args.trace_html.write_text(trace_page(tokenizer, f"xlm generate: {args.model}", traces))
        print(f"wrote {args.trace_html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
