"""The tanh GELU's compiled training path computes torch's function, and falls back where it must."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from xlm.nn.cpu import accelerate_training
from xlm.nn.cpu.gelu_tanh import (MIN_COMPILED_NUMEL, CompiledGeluFeedForward, compiled_gelu_tanh, gelu_tanh,
                                  gelu_tanh_sigmoid_form)
from xlm.nn.feed_forward import FeedForward

HAS_COMPILER = shutil.which(os.environ.get("CXX", "g++")) is not None


def _reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's tanh GELU and its gradient of sum(y * w), in float64."""
    x64 = x.detach().double().requires_grad_()
    y = F.gelu(x64, approximate="tanh")
    return y.detach(), torch.autograd.grad(y, x64, torch.linspace(-1, 1, x.numel()).double().view(x.shape))[0]


def _made_by(y: torch.Tensor) -> str:
    """The autograd node that computed `y`, under the view back to the input's shape."""
    node = y.grad_fn
    while node.name() == "ViewBackward0":
        node = node.next_functions[0][0]
    return node.name()


def _accelerated(ffn: FeedForward) -> FeedForward:
    """The feed-forward as the trainer runs it on CPU (xlm.nn.cpu.accelerate_training)."""
    assert accelerate_training(ffn) == [""] and type(ffn) is CompiledGeluFeedForward
    return ffn


def test_sigmoid_form_is_the_tanh_gelu() -> None:
    x = torch.linspace(-12, 12, 10_001, dtype=torch.float64)
    torch.testing.assert_close(gelu_tanh_sigmoid_form(x), F.gelu(x, approximate="tanh"), rtol=1e-12, atol=1e-12)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler for inductor on this machine")
def test_training_path_is_compiled_and_matches_torch() -> None:
    assert compiled_gelu_tanh() is not None
    torch.manual_seed(0)
    for shape in ((4, 37, 512), (3, 100, 130)):  # two lengths through the one dynamic-shape kernel
        x = (3 * torch.randn(shape)).requires_grad_()
        y = gelu_tanh(x)
        assert _made_by(y) == "CompiledFunctionBackward"
        weights = torch.linspace(-1, 1, x.numel()).view(shape)
        (grad,) = torch.autograd.grad(y, x, weights)
        want_y, want_grad = _reference(x)
        assert (y.double() - want_y).abs().max() < 2e-6
        assert (grad.double() - want_grad).abs().max() < 2e-6
        eager = F.gelu(x.detach(), approximate="tanh").double()  # as close as torch's own kernel
        assert (y.double() - want_y).abs().max() <= 4 * (eager - want_y).abs().max() + 1e-7


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler for inductor on this machine")
def test_an_accelerated_feed_forward_trains_through_the_compiled_kernel_with_eager_values_and_gradients() -> None:
    torch.manual_seed(0)
    eager = FeedForward(64, 256, activation="gelu_tanh")
    ffn = _accelerated(FeedForward(64, 256, activation="gelu_tanh"))
    ffn.load_state_dict(eager.state_dict())
    x = torch.randn(4, 40, 64)  # 40,960 hidden elements: above MIN_COMPILED_NUMEL
    assert _made_by(ffn.hidden(x)) == "CompiledFunctionBackward"
    assert _made_by(eager.hidden(x)) == "GeluBackward0"  # the model code's own path: torch's kernel
    y, want = ffn(x), eager(x)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-6)
    y.square().sum().backward()
    want.square().sum().backward()
    for got, expected in zip(ffn.parameters(), eager.parameters()):
        torch.testing.assert_close(got.grad, expected.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler for inductor on this machine")
def test_inside_a_compiled_model_the_sigmoid_form_is_traced() -> None:
    torch.manual_seed(0)
    ffn = _accelerated(FeedForward(64, 256, activation="gelu_tanh"))
    x = torch.randn(2, 80, 64)
    compiled = torch.compile(ffn)  # what trainer.compile=true does to the whole model, after the swap
    y = compiled(x)
    torch.testing.assert_close(y, ffn.down_proj(F.gelu(ffn.up_proj(x), approximate="tanh")), rtol=1e-5, atol=1e-6)
    y.sum().backward()
    assert ffn.up_proj.weight.grad is not None and ffn.up_proj.weight.grad.abs().sum() > 0


def test_eval_small_and_counted_inputs_run_torchs_kernel() -> None:
    x = torch.randn(4, 64, 512)
    with torch.no_grad():
        assert torch.equal(gelu_tanh(x), F.gelu(x, approximate="tanh"))
    small = torch.randn(MIN_COMPILED_NUMEL - 1, requires_grad=True)
    assert _made_by(gelu_tanh(small)) == "GeluBackward0"
    ffn = _accelerated(FeedForward(128, 512, activation="gelu_tanh"))
    x = torch.randn(4, 64, 128)
    with torch.no_grad():
        assert torch.equal(ffn.hidden(x), F.gelu(ffn.up_proj(x), approximate="tanh"))
    assert _made_by(ffn.hidden(torch.randn(1, 63, 128))) == "GeluBackward0"  # 32,256 < MIN_COMPILED_NUMEL
    with FlopCounterMode(display=False) as counter:  # a dispatch mode cannot enter a compiled function
        ffn(torch.randn(2, 64, 128)).sum().backward()
    # two projections forward, their weight gradients and the down projection's input gradient
    assert counter.get_total_flops() == 5 * (2 * 2 * 64 * 128 * 512)


def test_switch_off_and_failed_compile_fall_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XLM_EAGER_GELU", "1")
    compiled_gelu_tanh.cache_clear()
    try:
        assert compiled_gelu_tanh() is None
        x = torch.randn(8, 64, 512, requires_grad=True)
        assert _made_by(gelu_tanh(x)) == "GeluBackward0"
    finally:
        compiled_gelu_tanh.cache_clear()
    # a compiler that does not exist, and no cached kernels to hide it: a warning, then torch's kernel
    script = ("import warnings, torch; from xlm.nn.cpu.gelu_tanh import gelu_tanh\n"
              "x = torch.randn(8, 64, 512, requires_grad=True)\n"
              "with warnings.catch_warnings(record=True) as caught:\n"
              "    warnings.simplefilter('always'); y = gelu_tanh(x); y.sum().backward()\n"
              "print(y.grad_fn.name()); print(*[str(w.message) for w in caught], sep='\\n')\n")
    env = {**os.environ, "CXX": "/nonexistent/g++", "TORCHINDUCTOR_FORCE_DISABLE_CACHES": "1"}
    env.pop("XLM_EAGER_GELU", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("GeluBackward0\n"), result.stdout
    assert "compiling its fused form failed" in result.stdout and "XLM_EAGER_GELU=1" in result.stdout


@pytest.mark.skipif(not HAS_COMPILER, reason="no C++ compiler for inductor on this machine")
@pytest.mark.parametrize("mode", ["torch.no_grad()", "torch.inference_mode()"])
def test_a_kernel_first_built_with_grad_off_still_compiles(mode: str) -> None:
    """accelerate_training under no_grad built the probe there: its backward failed, a warning told the user to
    install a C++ compiler, and every later training step ran the eager kernel."""
    script = ("import warnings, torch; from xlm.errors import XlmWarning\n"
              "from xlm.nn.cpu.gelu_tanh import compiled_gelu_tanh, gelu_tanh\n"
              "warnings.simplefilter('error', XlmWarning)\n"
              f"with {mode}:\n"
              "    assert compiled_gelu_tanh() is not None\n"
              "x = torch.randn(8, 64, 512, requires_grad=True)\n"
              "print(gelu_tanh(x).grad_fn.next_functions[0][0].name())\n")
    env = {k: v for k, v in os.environ.items() if k != "XLM_EAGER_GELU"}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "CompiledFunctionBackward"
