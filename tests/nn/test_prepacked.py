"""Prepacked decode-time linears compute what nn.Linear does, only where they should, and leave no trace."""

import pytest
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

from xlm.nn import FeedForward, MultiheadAttention
from xlm.nn.cpu import accelerate_training, prepacked, prepacked_linears
from xlm.nn.cpu.fused_qkv import FusedQkvAttention
from xlm.nn.cpu.gelu_tanh import CompiledGeluFeedForward
from xlm.nn.cpu.prepacked import KERNELS, PackedLinear, can_prepack

pytestmark = pytest.mark.skipif(not can_prepack(nn.Linear(2, 2)), reason="this torch build has no oneDNN linear ops")


def _ops(fn) -> set[str]:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


def test_rows_of_the_packed_count_take_the_reordered_weight_and_match_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 1024), nn.GELU(), nn.Linear(1024, 256, bias=False))
    x = torch.randn(8, 1, 256)
    with torch.no_grad():
        expected = model(x)
        with prepacked_linears(model, rows=8, kernel="onednn"):
            got = model(x)
            ops = _ops(lambda: model(x))
            other_rows = _ops(lambda: model(torch.randn(3, 256)))  # another row count: the layer's own forward
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert "mkldnn::_linear_pointwise" in ops and "mkldnn::_linear_pointwise" not in other_rows


def test_small_weights_and_single_rows_stay_unpacked():
    model = nn.Sequential(nn.Linear(128, 128), nn.Linear(128, 1024))
    with torch.no_grad():
        with prepacked_linears(model, rows=8):
            assert "forward" not in model[0].__dict__ and "forward" in model[1].__dict__
        with prepacked_linears(model, rows=1):
            assert "forward" not in model[1].__dict__


def test_autograd_and_exit_restore_the_layers_own_forward():
    torch.manual_seed(0)
    linear = nn.Linear(512, 512)
    x = torch.randn(4, 512, requires_grad=True)
    with prepacked_linears(linear, rows=4, kernel="onednn"):
        assert "mkldnn::_linear_pointwise" not in _ops(lambda: linear(x).sum().backward())  # grad mode: unpacked
        assert x.grad is not None
    assert "forward" not in linear.__dict__
    with pytest.raises(RuntimeError, match="inside"):
        with prepacked_linears(linear, rows=4):
            raise RuntimeError("inside")
    assert "forward" not in linear.__dict__  # restored after an error too
    with torch.no_grad():
        assert "mkldnn::_linear_pointwise" not in _ops(lambda: linear(x))
        with prepacked_linears(linear, rows=4, kernel="onednn"), torch.autocast("cpu", dtype=torch.bfloat16):
            assert linear(x).dtype == torch.bfloat16  # autocast decides the dtype, as without packing



def _count(fn, op: str) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(event.count for event in prof.key_averages() if event.key == op)


MATMUL_OP = {"onednn": "mkldnn::_linear_pointwise", "blas": "aten::addmm"}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("num_kv_heads,bias", [(8, True), (2, False)])
def test_attention_runs_q_k_v_as_one_packed_matmul_with_the_same_output(num_kv_heads, bias, kernel):
    torch.manual_seed(0)
    attn = MultiheadAttention(256, 8, num_kv_heads=num_kv_heads, bias=bias).eval()
    x = torch.randn(8, 1, 256)
    with torch.no_grad():
        expected = attn(x)
        with prepacked_linears(attn, rows=8, kernel=kernel):
            assert attn.project_qkv.packed.kernel == kernel  # stands in for the method on this instance
            got = attn(x)
            op = "aten::mm" if kernel == "blas" and not bias else MATMUL_OP[kernel]
            calls = _count(lambda: attn(x), op)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert calls == 2  # q/k/v together, then the output projection
    assert "project_qkv" not in attn.__dict__ and "forward" not in attn.q_proj.__dict__


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("activation", ["gelu", "gelu_tanh", "relu", "swiglu"])
def test_feed_forward_runs_its_activation_with_the_packed_matmul(activation, kernel):
    torch.manual_seed(0)
    ffn = FeedForward(256, 1024, activation=activation)
    x = torch.randn(8, 1, 256)
    with torch.no_grad():
        expected = ffn(x)
        with prepacked_linears(ffn, rows=8, kernel=kernel):
            got = ffn(x)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                ffn(x)
            other_rows = ffn(x[:3])  # another row count: the unpacked path
    ops = {event.key for event in prof.key_averages()}
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(other_rows, expected[:3], rtol=1e-5, atol=1e-5)
    if kernel == "onednn":  # in the matmul's epilogue
        assert not ops & {"aten::gelu", "aten::relu", "aten::silu"}
    else:  # a BLAS matmul on the transposed weight, then the activation
        assert "aten::addmm" in ops and "aten::linear" not in ops
    assert "hidden" not in ffn.__dict__


def test_fused_projections_are_removed_after_an_error_and_skip_autograd():
    attn, ffn = MultiheadAttention(256, 4), FeedForward(256, 1024)
    with pytest.raises(RuntimeError, match="inside"):
        with prepacked_linears(nn.ModuleList([attn, ffn]), rows=4, kernel="onednn"):
            x = torch.randn(4, 1, 256, requires_grad=True)
            assert _count(lambda: ffn(attn(x)).sum().backward(), "mkldnn::_linear_pointwise") == 0
            assert x.grad is not None
            raise RuntimeError("inside")
    assert "project_qkv" not in attn.__dict__ and "hidden" not in ffn.__dict__


def test_a_nested_block_keeps_the_enclosing_blocks_packing():
    attn = MultiheadAttention(256, 4)
    with prepacked_linears(attn, rows=4):
        outer = attn.__dict__["project_qkv"]
        with prepacked_linears(attn, rows=8):
            assert attn.__dict__["project_qkv"] is outer and "forward" not in attn.q_proj.__dict__
        assert attn.__dict__["project_qkv"] is outer
    assert "project_qkv" not in attn.__dict__


@pytest.mark.parametrize("kernel", KERNELS)
def test_a_model_accelerated_for_training_decodes_packed_with_the_same_output_and_keeps_its_classes(kernel):
    torch.manual_seed(0)
    model = nn.ModuleList([MultiheadAttention(256, 4), FeedForward(256, 1024, activation="gelu_tanh")]).eval()
    x = torch.randn(4, 1, 256)
    with torch.no_grad():
        expected = model[1](model[0](x))
        accelerate_training(model)  # as the trainer leaves the model its evaluation decodes with
        with prepacked_linears(model, rows=4, kernel=kernel):
            assert _kernels_in(model) == [kernel, kernel]
            got = model[1](model[0](x))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (type(model[0]), type(model[1])) == (FusedQkvAttention, CompiledGeluFeedForward)
    assert _kernels_in(model) == []


def _kernels_in(model: nn.Module) -> list[str]:
    """The kernel of each packed site, in module order: the methods standing in on the instances."""
    return [m.__dict__[method].packed.kernel for m in model.modules() for method in ("project_qkv", "hidden")
            if method in m.__dict__]


def test_auto_times_one_kernel_for_the_whole_module_and_remembers_it_per_structure(monkeypatch):
    monkeypatch.setattr(prepacked, "_FASTER_KERNEL", {})
    torch.manual_seed(0)
    model = nn.ModuleList([MultiheadAttention(256, 4), FeedForward(256, 1024, activation="gelu_tanh"),
                           MultiheadAttention(256, 4), FeedForward(256, 1024, activation="gelu_tanh")]).eval()
    x = torch.randn(4, 1, 256)
    with torch.no_grad():
        expected = model[1](x)
        with prepacked_linears(model, rows=4):
            kernels = _kernels_in(model)
            torch.testing.assert_close(model[1](x), expected, rtol=1e-5, atol=1e-5)
    assert len(kernels) == 4 and len(set(kernels)) == 1 and kernels[0] in KERNELS  # one kernel serves all sites
    assert list(prepacked._FASTER_KERNEL.values()) == [kernels[0]]
    # the remembered choice is what a later entry with the same structure gets, untimed
    other = "blas" if kernels[0] == "onednn" else "onednn"
    (key,) = prepacked._FASTER_KERNEL
    prepacked._FASTER_KERNEL[key] = other
    with prepacked_linears(model, rows=4):
        assert _kernels_in(model) == [other] * 4
    with prepacked_linears(model, rows=8):  # another row count: timed anew
        assert len(set(_kernels_in(model))) == 1
    with prepacked_linears(model[:2], rows=4):  # another structure: timed anew
        assert len(set(_kernels_in(model[:2]))) == 1
    assert len(prepacked._FASTER_KERNEL) == 3


def test_an_unknown_kernel_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match="kernel must be 'auto' or one of"):
        with prepacked_linears(MultiheadAttention(256, 4), rows=4, kernel="mkl"):
            pass
    with pytest.raises(ValueError, match="kernel must be one of"):
        PackedLinear(torch.randn(8, 8), None, 4, kernel="mkl")
