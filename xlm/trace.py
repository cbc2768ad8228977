"""Step-by-step records of how a sampler built its output, and their text and page forms, for
`xlm generate --trace` and `--trace-html`.

A predictor with `on_step` set calls it once per step with the rows as they now stand and the
positions it wrote in that step (appended, unmasked or inserted tokens). Nothing is recorded
when `on_step` is None, so sampling pays nothing for the option.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypedDict

from jaxtyping import Bool, Int
from torch import Tensor

if TYPE_CHECKING:
    from xlm.data.tokenizers import Tokenizer


class TraceStep(TypedDict):
    step: int
    rows: list[list[int]]  # each row's tokens after the step
    changed: list[list[int]]  # per row, the positions in `rows[i]` written by the step


StepHook = Callable[[TraceStep], None]


def emit(hook: StepHook | None, step: int, sequences: Int[Tensor, "batch seq"],
         changed: Bool[Tensor, "batch seq"]) -> None:
    if hook is None:
        return
    hook({"step": step, "rows": sequences.tolist(),
          "changed": [row.nonzero().flatten().tolist() for row in changed]})


# ----------------------------------------------------------------- showing a trace

#: Around the tokens a step wrote, in the text trace: never part of a token's own spelling such as [MASK].
NEW = ("{", "}")


@dataclass(frozen=True, kw_only=True)
class TracedSample:
    """One sample's steps, for showing: step 0 is its prompt, step i the sampler's i-th recorded step."""

    label: str
    prompt_ids: list[int]
    steps: list[TraceStep]
    row: int = 0  # the sample's row in each step


def token_strings(tokenizer: Tokenizer, row: Sequence[int]) -> list[str]:
    return [tokenizer.decode([t], skip_special_tokens=False) for t in row]


def text_trace(tokenizer: Tokenizer, sample: TracedSample) -> list[str]:
    """`step i of n: ...` per step, from the prompt (step 0) on; the tokens a step wrote in {braces},
    padding left out."""
    pad, n = tokenizer.pad_token_id, len(sample.steps)
    lines = [f"step {0:>{len(str(n))}} of {n}: {' '.join(token_strings(tokenizer, sample.prompt_ids))}"]
    for i, step in enumerate(sample.steps, 1):
        ids, changed = step["rows"][sample.row], set(step["changed"][sample.row])
        words = [f"{NEW[0]}{w}{NEW[1]}" if j in changed else w
                 for j, (t, w) in enumerate(zip(ids, token_strings(tokenizer, ids))) if t != pad or j in changed]
        lines.append(f"step {i:>{len(str(n))}} of {n}: {' '.join(words)}")
    return lines


def _frames(tokenizer: Tokenizer, sample: TracedSample) -> list[dict[str, list]]:
    pad = tokenizer.pad_token_id
    frames = [{"tokens": token_strings(tokenizer, sample.prompt_ids), "changed": []}]
    for step in sample.steps:
        ids, changed = step["rows"][sample.row], step["changed"][sample.row]
        kept = [j for j, t in enumerate(ids) if t != pad]  # padding left out; `changed` renumbered to match
        frames.append({"tokens": token_strings(tokenizer, [ids[j] for j in kept]),
                       "changed": [kept.index(j) for j in changed if j in kept]})
    return frames


def trace_page(tokenizer: Tokenizer, title: str, samples: Sequence[TracedSample]) -> str:
    """A self-contained page (no external scripts): per sample, a play/pause button and a slider over its
    steps, opening on step 0 (the prompt), and a legend for the highlight."""
    data = json.dumps([{"label": s.label, "frames": _frames(tokenizer, s)} for s in samples]).replace("</", "<\\/")
    return f"""<!doctype html><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}} .tok{{display:inline-block;margin:2px;padding:2px 4px;
border-radius:3px;background:#eee;font-family:monospace}} .new{{background:#ffd54f}}
.sample{{margin-bottom:2em}} .controls{{display:flex;gap:1em;align-items:center}} button{{min-width:5em}}</style>
<h1>{html.escape(title)}</h1>
<p class="legend">Step 0 is the prompt; each later step shows the sample as the sampler left it.
<span class="tok new">token</span> written in this step (appended, unmasked or inserted),
<span class="tok">token</span> there before.</p>
<div id="root"></div>
<script>
const samples = {data};
const root = document.getElementById("root");
samples.forEach((s) => {{
  const last = s.frames.length - 1;
  const box = document.createElement("div"); box.className = "sample";
  const head = document.createElement("h3"); head.textContent = s.label;
  const controls = document.createElement("div"); controls.className = "controls";
  const play = document.createElement("button"); play.className = "play"; play.textContent = "Play";
  const slider = document.createElement("input"); slider.type = "range"; slider.className = "slider";
  slider.min = 0; slider.max = last; slider.value = 0;
  const info = document.createElement("span"); info.className = "step-label";
  const line = document.createElement("div"); line.className = "tokens";
  let timer = null;
  function show(i) {{
    const f = s.frames[i]; slider.value = i;
    info.textContent = `step ${{i}} of ${{last}}` + (Number(i) === 0 ? " (the prompt)" : "");
    line.replaceChildren(...f.tokens.map((t, j) => {{ const span = document.createElement("span");
      span.className = "tok" + (f.changed.includes(j) ? " new" : ""); span.textContent = t; return span; }}));
  }}
  function stop() {{ clearInterval(timer); timer = null; play.textContent = "Play"; }}
  play.onclick = () => {{
    if (timer !== null) {{ stop(); return; }}
    if (Number(slider.value) >= last) show(0);
    play.textContent = "Pause";
    timer = setInterval(() => {{ const i = Number(slider.value) + 1; show(i); if (i >= last) stop(); }}, 600);
  }};
  slider.oninput = () => {{ stop(); show(Number(slider.value)); }};
  controls.append(play, slider, info); box.append(head, controls, line); root.appendChild(box); show(0);
}});
</script>
"""
