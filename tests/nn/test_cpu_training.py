"""accelerate_training changes which kernels run and nothing else: the same modules, parameters,
state-dict keys, losses and gradients, for every family."""

import copy
import os
import shutil

import pytest
import torch
from torch import nn

import xlm
from xlm.data.tokenizers import WordTokenizer
from xlm.nn import FeedForward, MultiheadAttention
from xlm.nn.cpu import accelerate_training
from xlm.nn.cpu.fused_qkv import FusedQkvAttention
from xlm.nn.cpu.gelu_tanh import CompiledGeluFeedForward

HAS_COMPILER = shutil.which(os.environ.get("CXX", "g++")) is not None
TOKENIZER = WordTokenizer([str(i) for i in range(121)])  # 128 ids, as the star tasks
ACCELERATED = (FusedQkvAttention, CompiledGeluFeedForward)


def _examples(batch: int = 16) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(0)
    return [{"prompt_ids": torch.randint(7, 128, (26,), generator=g).tolist(),
             "target_ids": torch.randint(7, 128, (8,), generator=g).tolist()} for _ in range(batch)]


def _model_and_unit(arch: str):
    family = xlm.get_family(xlm.list_archs()[arch])
    fields = set(family.config_class.__dataclass_fields__)
    overrides: dict = {"model_dim": 128, "num_layers": 2, "num_heads": 4}
    if "ffn_dim" in fields:  # 16 x 34 x 512 GELU inputs: large enough for the compiled kernel
        overrides["ffn_dim"] = 512
    if "activation" in fields:
        overrides["activation"] = "gelu_tanh"
    if "cond_dim" in fields:
        overrides["cond_dim"] = 64
    torch.manual_seed(0)
    model = xlm.create_model(arch, vocab_size=128, **overrides)
    return model, family.unit_factory(model, TOKENIZER, family.sampler_config_class(max_new_tokens=9))


def _loss_and_grads(unit, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], set[str]]:
    """The loss, every parameter's gradient, and the ops that ran."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same noise for losses that draw some (MDLM, MLM, ILM)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        loss = unit.loss(model, batch)["loss"]
        loss.backward()
    ops = {event.key for event in prof.key_averages()}
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}, ops


@pytest.mark.parametrize("arch", ["arlm_star", "mlm_star", "ilm_star", "mdlm_star"])
def test_an_accelerated_model_keeps_its_parameters_and_keys_and_gives_the_same_loss_and_gradients(arch):
    model, unit = _model_and_unit(arch)
    reference = copy.deepcopy(model)
    params_before = [(name, id(p)) for name, p in model.named_parameters()]
    storage_before = {key: value.data_ptr() for key, value in model.state_dict().items()}

    swapped = accelerate_training(model)

    expected = sorted(name for name, m in reference.named_modules()
                      if type(m) is MultiheadAttention or (type(m) is FeedForward and m.activation == "gelu_tanh"))
    assert swapped and sorted(swapped) == expected
    assert {type(model.get_submodule(name)) for name in swapped} <= set(ACCELERATED)
    assert [(name, id(p)) for name, p in model.named_parameters()] == params_before
    assert {key: value.data_ptr() for key, value in model.state_dict().items()} == storage_before
    assert list(model.state_dict()) == list(reference.state_dict())

    batch = unit.collate_train(_examples())
    loss, grads, ops = _loss_and_grads(unit, model, batch)
    want_loss, want_grads, reference_ops = _loss_and_grads(unit, reference, batch)
    if HAS_COMPILER:  # the tanh GELU ran compiled, and only where accelerated
        assert "CompiledFunctionBackward" in ops and "CompiledFunctionBackward" not in reference_ops
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    assert grads.keys() == want_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, want_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_it_is_idempotent_leaves_subclasses_alone_and_does_nothing_when_disabled_or_off_the_cpu():
    class OwnAttention(MultiheadAttention):  # someone's own variant keeps its own methods
        pass

    model = nn.ModuleDict({"attn": MultiheadAttention(16, 2), "own": OwnAttention(16, 2),
                           "ffn": FeedForward(16, 32, activation="gelu_tanh"), "erf": FeedForward(16, 32)})
    assert accelerate_training(model, enabled=False) == []
    assert accelerate_training(copy.deepcopy(model).to("meta")) == []
    assert [type(m) for m in model.values()] == [MultiheadAttention, OwnAttention, FeedForward, FeedForward]
    assert accelerate_training(model) == ["attn", "ffn"]
    assert accelerate_training(model) == []
    assert [type(m) for m in model.values()] == [FusedQkvAttention, OwnAttention, CompiledGeluFeedForward,
                                                 FeedForward]


@pytest.mark.skipif(not HAS_COMPILER, reason="the compiled GELU needs a C++ compiler")
def test_activation_checkpointing_on_an_accelerated_model_gives_the_same_gradients():
    """The compiled GELU is built when swapped in, not by the first forward: built inside a
    checkpointed block, the recomputation saved other tensors than the forward and backward failed."""
    from xlm.nn.cpu.gelu_tanh import compiled_gelu_tanh
    from xlm.recipes.activation_checkpointing import checkpoint_activations

    compiled_gelu_tanh.cache_clear()  # as in a fresh process
    plain, unit = _model_and_unit("arlm_star")
    checkpointed = copy.deepcopy(plain)
    accelerate_training(plain)
    accelerate_training(checkpointed)
    checkpoint_activations(checkpointed)
    batch = unit.collate_train(_examples())
    loss_ckpt, grads_ckpt, _ = _loss_and_grads(unit, checkpointed, batch)  # the first forward of the process
    loss, grads, _ = _loss_and_grads(unit, plain, batch)
    torch.testing.assert_close(loss_ckpt, loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)
