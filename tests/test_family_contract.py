"""The contract every registered model family keeps, checked for each of its archs.

The cases are read off the registry (`families`, `family.archs`, `family.converters`), so a new arch, converter
or family is checked without a line here. For each arch:

- its config validates, and the model builds on the `meta` device (no memory) with the shapes a real build has;
- shrunk to tens of thousands of parameters with `dataclasses.replace` (fewer and narrower layers, a small vocabulary,
  short rows; activation, norm, positions, biases, GQA, partial rotary and tying kept), the family's unit collates
  seq2seq rows and the model gives finite outputs, a finite loss over tokens and finite gradients;
- each converter that writes its layout either round trips the model exactly (same tensors, same config, same
  outputs) or, where `export_problems` names why the layout cannot hold the config, refuses with those reasons;
- a run dir written with `write_run_dir` loads back through `xlm.load_model` as the same model.

Outputs are compared as the family's own loss calls the model (a forward hook), so this file needs to know
nothing of a family's forward signature.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

import xlm
import xlm.models  # registers the core families before the cases are read off the registry
from xlm.data.tokenizers import WordTokenizer
from xlm.errors import ConversionError
from xlm.registry import Family, families
from xlm.run_dir import write_run_dir

from tests.xlm_core_fixtures import randomize_for_xlm_core_

TOKENIZER = WordTokenizer([str(i) for i in range(13)])  # ids 7..19 after the 7 special tokens
EXAMPLES = [{"prompt_ids": TOKENIZER.encode(prompt), "target_ids": TOKENIZER.encode(target)}
            for prompt, target in (("1 2 3", "4 5 6 7"), ("8 9", "10 11 12 1 2"), ("3 3 4 5", "6"))]

#: the sizes a shrunk arch gets, for those of these fields its config has; every other field is kept
TINY_SIZES = {"vocab_size": TOKENIZER.vocab_size + 4, "model_dim": 32, "num_layers": 2, "num_heads": 4,
              "max_seq_len": 128, "cond_dim": 16}
TINY_FFN_DIM = 48
TINY_MAX_PARAMETERS = 200_000  # a shrunk arch above this is not shrunk: teach `shrink` its size fields
CPU_BUILD_MAX_PARAMETERS = 10_000_000  # full archs up to this size are also built for real, to compare with meta

ARCHS = [(family, arch) for family in families.names() for arch in families.get(family).archs.names()]
LAYOUTS = [(family, arch, name) for family, arch in ARCHS
           for name, converter in families.get(family).converters.items() if converter.from_xlm is not None]
each_arch = pytest.mark.parametrize(("family", "arch"), ARCHS, ids=[arch for _, arch in ARCHS])
each_layout = pytest.mark.parametrize(("family", "arch", "converter"), LAYOUTS,
                                      ids=[f"{arch}-{name}" for _, arch, name in LAYOUTS])


# -- building ------------------------------------------------------------------------------------

def field_names(config: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(config)}


def shrink(config: Any) -> Any:
    """The arch at test size: widths, depth, vocabulary and length shrink; the structure stays (a grouped-query
    or partial-rotary arch stays one, an explicit FFN width stays explicit, a None stays None)."""
    names = field_names(config)
    values: dict[str, Any] = {k: v for k, v in TINY_SIZES.items() if k in names}
    head_dim = TINY_SIZES["model_dim"] // TINY_SIZES["num_heads"]
    if getattr(config, "num_kv_heads", None) is not None:
        values["num_kv_heads"] = max(1, TINY_SIZES["num_heads"] * config.num_kv_heads // config.num_heads)
    if getattr(config, "rotary_dim", None) is not None:
        values["rotary_dim"] = head_dim if config.rotary_dim == config.head_dim else head_dim // 2
    if "ffn_dim" in names and config.ffn_dim is not None:
        values["ffn_dim"] = TINY_FFN_DIM
    if "pad_token_id" in names and not 0 <= config.pad_token_id < TINY_SIZES["vocab_size"]:
        values["pad_token_id"] = TOKENIZER.pad_token_id
    return dataclasses.replace(config, **values)


def tiny(family: Family, arch: str) -> tuple[Any, nn.Module]:
    """The shrunk arch with random parameters, so that a misplaced key shows."""
    config = shrink(family.archs.get(arch))
    torch.manual_seed(0)
    return config, randomize_for_xlm_core_(family.factory(config))


def unit_of(family: Family, model: nn.Module) -> Any:
    return family.unit_factory(model, TOKENIZER, family.sampler_config_class())


def collate(unit: Any) -> dict[str, Any]:
    torch.manual_seed(0)
    return unit.collate_train(EXAMPLES)


def tensors(output: Any) -> Iterator[Tensor]:
    """The tensors of a model output: a tensor, a tuple or NamedTuple, a mapping or a dataclass of them."""
    if isinstance(output, Tensor):
        yield output
    elif isinstance(output, (tuple, list)):
        for item in output:
            yield from tensors(item)
    elif isinstance(output, dict):
        for item in output.values():
            yield from tensors(item)
    elif dataclasses.is_dataclass(output):
        for f in dataclasses.fields(output):
            yield from tensors(getattr(output, f.name))


def loss_and_outputs(family: Family, model: nn.Module, batch: dict[str, Any]) -> tuple[dict[str, Tensor],
                                                                                       list[Tensor]]:
    """The family's loss on `batch` (its randomness seeded) and what the model returned inside it."""
    outputs: list[Tensor] = []
    hook = model.register_forward_hook(lambda module, args, output: outputs.extend(tensors(output)))
    try:
        torch.manual_seed(1)
        loss = unit_of(family, model).loss(model, batch)
    finally:
        hook.remove()
    return loss, outputs


def eval_outputs(family: Family, model: nn.Module, batch: dict[str, Any]) -> list[Tensor]:
    with torch.no_grad():
        return loss_and_outputs(family, model.eval(), batch)[1]


def assert_same_outputs(family: Family, model: nn.Module, other: nn.Module) -> None:
    batch = collate(unit_of(family, model))
    ours, theirs = eval_outputs(family, model, batch), eval_outputs(family, other, batch)
    assert ours and len(ours) == len(theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


def structure(model: nn.Module) -> tuple[dict[str, tuple[int, ...]], list[list[str]]]:
    """State-dict shapes, and the groups of keys that share one tensor (tied weights)."""
    state = model.state_dict(keep_vars=True)
    groups: dict[int, list[str]] = {}
    for key, tensor in state.items():
        groups.setdefault(id(tensor), []).append(key)
    return {k: tuple(v.shape) for k, v in state.items()}, sorted(g for g in groups.values() if len(g) > 1)


def layer_pattern(model: nn.Module) -> tuple[set[str], set[tuple[str, ...]]]:
    """`structure` without sizes or layer numbers: what a shrunk arch must share with its full size."""
    shapes, tied = structure(model)

    def pattern(key: str) -> str:
        return re.sub(r"\.\d+\.", ".N.", key)

    return {pattern(k) for k in shapes}, {tuple(pattern(k) for k in group) for group in tied}


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- the contract ----------------------------------------------------------------------------------

@each_arch
def test_the_arch_validates_and_builds_on_meta(family, arch):
    family = families.get(family)
    config = family.archs.get(arch)
    assert isinstance(config, family.config_class)
    assert dataclasses.replace(config) == config  # validation passes
    assert family.config_class(**dataclasses.asdict(config)) == config  # what a run dir stores rebuilds it

    meta = family.factory(config, device="meta")
    assert all(t.is_meta for t in [*meta.parameters(), *meta.buffers()])
    assert num_parameters(meta) > 0
    assert structure(family.factory(config, device="meta")) == structure(meta)
    if num_parameters(meta) <= CPU_BUILD_MAX_PARAMETERS:
        assert structure(family.factory(config)) == structure(meta)

    small = shrink(config)
    assert structure(family.factory(small, device="meta")) == structure(family.factory(small))
    assert layer_pattern(family.factory(small, device="meta")) == layer_pattern(meta)
    assert num_parameters(family.factory(small, device="meta")) <= TINY_MAX_PARAMETERS


@each_arch
def test_a_tiny_batch_gives_a_finite_loss_and_gradients(family, arch):
    family = families.get(family)
    _, model = tiny(family, arch)
    batch = collate(unit_of(family, model))
    loss, outputs = loss_and_outputs(family, model.train(), batch)
    assert outputs and all(o.numel() and o.isfinite().all() for o in outputs)
    assert loss["loss"].isfinite() and loss["num_tokens"] > 0
    loss["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} takes no part in the loss"
        assert p.grad.isfinite().all(), name
    assert any(p.grad.any() for p in model.parameters())


@each_layout
def test_each_layout_round_trips_exactly_or_says_why_not(family, arch, converter):
    family = families.get(family)
    layout = family.converters[converter]
    config, model = tiny(family, arch)
    problems = layout.export_problems(config) if layout.export_problems else []
    full_problems = layout.export_problems(family.archs.get(arch)) if layout.export_problems else []
    assert bool(problems) == bool(full_problems), "shrinking changed whether the layout holds the arch"
    if problems:
        with pytest.raises(ConversionError) as err:
            layout.from_xlm(model.state_dict(), config)
        assert all(problem in str(err.value) for problem in problems), (str(err.value), problems)
        return

    there = layout.from_xlm(model.state_dict(), config)
    back = layout.to_xlm(there.state, there.config)
    state = model.state_dict()
    assert set(back.state) == set(state)
    assert all(back.state[k].dtype == v.dtype and torch.equal(back.state[k], v) for k, v in state.items())

    # a field left None (derived from others, such as Llama's FFN width) may come back as the value it derives:
    # the model it builds must then have the same shapes, and (below) the same outputs
    resolved = dataclasses.replace(config, **{name: getattr(back.config, name) for name in field_names(config)
                                              if getattr(config, name) is None})
    assert back.config == resolved
    assert structure(family.factory(resolved, device="meta")) == structure(model)
    rebuilt = family.factory(back.config)
    rebuilt.load_state_dict(back.state, strict=True)
    assert_same_outputs(family, model, rebuilt)


@each_arch
def test_a_run_dir_loads_back_as_the_same_model(family, arch, tmp_path):
    family = families.get(family)
    config, model = tiny(family, arch)
    write_run_dir(tmp_path / "run", model=model, family=family.name, arch=arch, model_config=config,
                  sampler_config=family.sampler_config_class(), tokenizer=TOKENIZER, task=None, train_config=None,
                  metrics={})
    loaded = xlm.load_model(tmp_path / "run")
    assert type(loaded) is type(model) and loaded.config == config
    assert structure(loaded) == structure(model)
    state = loaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert xlm.load_tokenizer(tmp_path / "run").spec() == TOKENIZER.spec()
    assert_same_outputs(family, model, loaded)
