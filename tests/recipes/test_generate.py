"""The generate recipe: completions, step traces (each generated position written exactly once,
in the family's own order) and the replay page."""

import json
import re

import pytest
import torch

import xlm
from xlm.data.tokenizers import WordTokenizer
from xlm.recipes import generate
from xlm.run_dir import write_run_dir

TOK = WordTokenizer([str(i) for i in range(20)])


def _run(tmp_path, arch, **sampler):
    torch.manual_seed(0)
    family = xlm.get_family(xlm.list_archs()[arch])
    model = xlm.create_model(arch, vocab_size=TOK.vocab_size)
    with torch.no_grad():  # fresh MDLM/ILM heads are zero: give every family an opinion
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    path = tmp_path / arch
    write_run_dir(path, model=model, family=family.name, arch=arch, model_config=model.config,
                  sampler_config=family.sampler_config_class(**sampler), tokenizer=TOK, task="star_easy",
                  train_config=None, metrics={})
    return path


@pytest.mark.parametrize("arch, sampler", [("arlm_tiny", {"max_new_tokens": 5, "strategy": "greedy"}),
                                           ("mdlm_tiny", {"max_new_tokens": 5, "num_steps": 4}),
                                           ("mlm_tiny", {"max_new_tokens": 5, "num_steps": 3})])
def test_trace_writes_each_generated_position_once(tmp_path, arch, sampler):
    generator = xlm.load_generator(_run(tmp_path, arch, **sampler))
    steps = []
    text = generator.generate(["1 2 3"], seed=0, on_step=steps.append)[0]
    assert steps, "the sampler reported no step"
    written = [pos for s in steps for pos in s["changed"][0]]
    assert len(written) == len(set(written))  # no position written twice
    final = steps[-1]["rows"][0]
    prompt_len = len(TOK.encode("1 2 3")) + (0 if arch == "arlm_tiny" else 1)  # [BOS] after the prompt
    assert sorted(written) == list(range(len(final) - len(written), len(final)))  # exactly the generated tail
    assert len(final) - len(written) >= prompt_len
    assert text == generator.generate(["1 2 3"], seed=0)[0]  # tracing does not change the result


def test_recipe_prints_traces_and_writes_a_self_contained_page(tmp_path, capsys):
    run = _run(tmp_path, "mdlm_tiny", max_new_tokens=4, num_steps=4)
    page = tmp_path / "trace.html"
    assert generate.main(["--model", str(run), "--prompt", "1 2", "--prompt", "3", "--num-samples", "2", "--trace",
                          "--trace-html", str(page), "sampler.num_steps=8"]) == 0
    out = capsys.readouterr().out
    assert out.count("->") == 4 and re.search(r"step 1 of \d+: .*\{\d+\}", out) and "step 0 of" in out
    assert "[[" not in out  # written tokens are marked in braces, never [[MASK]]-like
    text = page.read_text()
    assert "<script src" not in text and "http" not in text
    samples = json.loads(re.search(r"const samples = (\[.*\]);", text).group(1))
    assert len(samples) == 4 and all(s["frames"] for s in samples)
    assert generate.main(["--model", str(run), "--prompt", "1 banana"]) == 2
    assert "banana" in capsys.readouterr().err
