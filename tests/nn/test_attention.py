import math

import pytest
import torch

from xlm.nn import (KVCache, MultiheadAttention, RotaryEmbedding, TransformerBlock, attention_mask_for,
                    build_attention_mask, make_norm)
from xlm.nn.cpu import accelerate_training
from xlm.nn.cpu.fused_qkv import FusedQkvAttention
from xlm.nn.feed_forward import FeedForward


def naive_attention(attn: MultiheadAttention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """Textbook softmax(QK^T / sqrt(d)) V per head, no rope, no GQA."""
    batch, seq, dim = x.shape
    heads, hd = attn.num_heads, attn.head_dim
    q = attn.q_proj(x).view(batch, seq, heads, hd).transpose(1, 2)
    k = attn.k_proj(x).view(batch, seq, heads, hd).transpose(1, 2)
    v = attn.v_proj(x).view(batch, seq, heads, hd).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    if causal:
        scores = scores.masked_fill(torch.ones(seq, seq, dtype=torch.bool).triu(1), float("-inf"))
    out = scores.softmax(-1) @ v
    return attn.out_proj(out.transpose(1, 2).reshape(batch, seq, dim))


@pytest.mark.parametrize("causal", [True, False])
def test_matches_naive_attention(causal):
    torch.manual_seed(0)
    attn = MultiheadAttention(32, 4, causal=causal).eval()
    x = torch.randn(2, 7, 32)
    expected = naive_attention(attn, x, causal)
    assert torch.allclose(attn(x), expected, atol=1e-5)
    # the explicit-mask path (all tokens real) must agree with the fast path
    assert torch.allclose(attn(x, key_padding_mask=torch.ones(2, 7, dtype=torch.bool)), expected, atol=1e-5)


def _fused(attn: MultiheadAttention) -> MultiheadAttention:
    """The attention as the trainer runs it on CPU (xlm.nn.cpu.accelerate_training)."""
    assert accelerate_training(attn) == [""] and type(attn) is FusedQkvAttention
    return attn


def _ops(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


@pytest.mark.parametrize("num_kv_heads", [4, 2])
def test_fused_qkv_projection_matches_separate_projections_in_values_and_gradients(num_kv_heads):
    torch.manual_seed(0)
    attn = _fused(MultiheadAttention(32, 4, num_kv_heads=num_kv_heads).double())
    params = [p for m in (attn.q_proj, attn.k_proj, attn.v_proj) for p in (m.weight, m.bias)]
    x = torch.randn(2, 7, 32, dtype=torch.float64, requires_grad=True)
    fused = attn.project_qkv(x)
    assert {t.grad_fn.name() for t in fused} == {"SplitWithSizesBackward0"}  # one matmul, split three ways
    separate = (attn.q_proj(x), attn.k_proj(x), attn.v_proj(x))
    cotangents = [torch.randn_like(t) for t in separate]
    for got, want in zip(fused, separate):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want)
    grads_fused = torch.autograd.grad(fused, params + [x], cotangents)
    grads_separate = torch.autograd.grad(separate, params + [x], cotangents)
    for got, want in zip(grads_fused, grads_separate):
        torch.testing.assert_close(got, want)


def test_without_autograd_q_k_v_run_on_their_own_weights_with_no_concatenation():
    torch.manual_seed(0)
    attn = _fused(MultiheadAttention(32, 4, num_kv_heads=2))
    x = torch.randn(2, 7, 32)
    trained = _ops(lambda: attn.project_qkv(x))
    with torch.no_grad():
        inferred = _ops(lambda: attn.project_qkv(x))
        got = attn.project_qkv(x)
    assert "aten::cat" in trained  # the fused matmul's weights
    assert "aten::cat" not in inferred
    for out, proj in zip(got, (attn.q_proj, attn.k_proj, attn.v_proj)):
        torch.testing.assert_close(out, proj(x).detach())


def test_the_model_code_itself_runs_q_k_v_as_three_projections_under_autograd_too():
    attn = MultiheadAttention(32, 4)
    x = torch.randn(2, 7, 32, requires_grad=True)
    assert "aten::cat" not in _ops(lambda: attn(x).sum().backward())
    assert {t.grad_fn.name() for t in attn.project_qkv(x)} == {"ViewBackward0"}  # nn.Linear's own output


def test_hooked_or_wrapped_projection_is_called_not_bypassed_by_the_fused_matmul():
    torch.manual_seed(0)
    attn = _fused(MultiheadAttention(16, 2).eval())
    x = torch.randn(1, 3, 16)
    plain = attn(x)
    handle = attn.k_proj.register_forward_hook(lambda _m, _i, out: out * 0)
    hooked = attn(x)
    handle.remove()
    assert not torch.allclose(hooked, plain)
    grads_seen = []
    handle = attn.q_proj.register_full_backward_hook(lambda _m, _gi, go: grads_seen.append(go))
    attn(x.detach().requires_grad_()).sum().backward()
    handle.remove()
    assert len(grads_seen) == 1

    class Scaled(torch.nn.Linear):  # stands in for a LoRA-style wrapper whose forward adds to F.linear
        def forward(self, inputs):
            return 2 * super().forward(inputs)

    wrapped = Scaled(16, 16)
    wrapped.load_state_dict(attn.v_proj.state_dict())
    attn.v_proj = wrapped
    torch.testing.assert_close(attn.project_qkv(x)[2], 2 * torch.nn.functional.linear(x, wrapped.weight, wrapped.bias))


@pytest.mark.parametrize("causal", [True, False])
def test_left_padding_does_not_change_real_positions(causal):
    torch.manual_seed(0)
    attn = MultiheadAttention(32, 4, causal=causal, rope=RotaryEmbedding(8)).eval()
    x = torch.randn(1, 5, 32)
    alone = attn(x, positions=torch.arange(5)[None])
    padded_x = torch.cat([torch.randn(1, 3, 32), x], dim=1)
    mask = torch.tensor([[False] * 3 + [True] * 5])
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    padded = attn(padded_x, positions=positions, key_padding_mask=mask)
    assert not padded.isnan().any()
    assert torch.allclose(padded[:, 3:], alone, atol=1e-5)


def test_fully_masked_query_rows_attend_to_themselves():
    torch.manual_seed(0)
    attn = MultiheadAttention(16, 2).eval()
    x = torch.randn(1, 4, 16)
    mask = torch.tensor([[False, False, True, True]])
    out = attn(x, key_padding_mask=mask)
    assert not out.isnan().any()
    # pad query 0 sees only itself: softmax over one key returns its value
    assert torch.allclose(out[0, 0], attn.out_proj(attn.v_proj(x[0, 0])), atol=1e-6)


def test_grouped_query_equals_repeated_kv_heads():
    torch.manual_seed(0)
    rope = RotaryEmbedding(8)
    gqa = MultiheadAttention(32, 4, num_kv_heads=2, rope=rope).eval()
    assert gqa.k_proj.weight.shape == (16, 32) and gqa.v_proj.weight.shape == (16, 32)
    mha = MultiheadAttention(32, 4, rope=rope).eval()
    with torch.no_grad():
        mha.q_proj.load_state_dict(gqa.q_proj.state_dict())
        mha.out_proj.load_state_dict(gqa.out_proj.state_dict())
        for name in ("k_proj", "v_proj"):
            src, dst = getattr(gqa, name), getattr(mha, name)
            # kv head j serves query heads 2j and 2j+1
            dst.weight.copy_(src.weight.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32))
            dst.bias.copy_(src.bias.view(2, 8).repeat_interleave(2, dim=0).reshape(32))
    x = torch.randn(2, 6, 32)
    out = gqa(x)
    assert out.shape == (2, 6, 32)
    assert torch.allclose(out, mha(x), atol=1e-5)


def test_rejects_bad_head_counts():
    with pytest.raises(ValueError, match="does not divide dim"):
        MultiheadAttention(30, 4)
    with pytest.raises(ValueError, match="num_kv_heads=3 does not divide num_heads=4"):
        MultiheadAttention(32, 4, num_kv_heads=3)


@pytest.mark.parametrize("with_mask", [False, True])
def test_kv_cache_incremental_equals_full(with_mask):
    torch.manual_seed(0)
    attn = MultiheadAttention(32, 4, num_kv_heads=2, rope=RotaryEmbedding(8)).eval()
    x = torch.randn(2, 6, 32)
    mask = torch.ones(2, 6, dtype=torch.bool) if with_mask else None
    full = attn(x, key_padding_mask=mask)
    cache = KVCache(num_layers=1, batch_size=2, num_kv_heads=2, head_dim=8, max_len=6, device="cpu",
                    dtype=torch.float32)
    outs = []
    for start, end in ((0, 3), (3, 4), (4, 6)):
        step_mask = mask[:, :end] if mask is not None else None
        outs.append(attn(x[:, start:end], key_padding_mask=step_mask, kv_cache=cache,
                         positions=torch.arange(start, end).expand(2, -1)))
        cache.advance(end - start)
    assert torch.allclose(torch.cat(outs, dim=1), full, atol=1e-5)


def test_mask_is_built_only_where_sdpa_needs_one():
    """No padding: a square pattern is `is_causal` (or nothing) and one cached query sees every key;
    a chunk after a cache, or any padding, needs the explicit mask."""
    full = torch.ones(2, 5, dtype=torch.bool)
    padded = full.clone()
    padded[0, 0] = False
    common = {"batch_size": 2, "device": torch.device("cpu")}
    for causal in (True, False):
        assert attention_mask_for(num_queries=5, past=0, causal=causal, key_padding_mask=full, **common) is None
        built = attention_mask_for(num_queries=5, past=0, causal=causal, key_padding_mask=padded, **common)
        assert torch.equal(built, build_attention_mask(num_queries=5, num_keys=5, past=0, causal=causal,
                                                       key_padding_mask=padded, **common))
    assert attention_mask_for(num_queries=1, past=4, causal=True, key_padding_mask=full, **common) is None
    chunk = attention_mask_for(num_queries=2, past=3, causal=True, key_padding_mask=None, **common)
    assert chunk is not None and chunk[0, 0].tolist() == [[True] * 4 + [False], [True] * 5]
    with pytest.raises(ValueError, match=r"key_padding_mask must have shape \(2, 4\) \(cached \+ new\), got \(2, 5\)"):
        attention_mask_for(num_queries=1, past=3, causal=True, key_padding_mask=full, **common)


def test_kv_cache_bounds():
    cache = KVCache(num_layers=2, batch_size=1, num_kv_heads=1, head_dim=4, max_len=3, device="cpu",
                    dtype=torch.float32)
    k, v = cache.update(1, torch.ones(1, 1, 2, 4), torch.zeros(1, 1, 2, 4))
    assert k.shape == (1, 1, 2, 4) and torch.equal(k, torch.ones(1, 1, 2, 4))
    cache.advance(2)
    assert cache.length == 2
    with pytest.raises(ValueError, match="exceed max_len=3"):
        cache.update(0, torch.ones(1, 1, 2, 4), torch.ones(1, 1, 2, 4))
    with pytest.raises(ValueError, match="batch_size=1"):
        cache.update(0, torch.ones(2, 1, 1, 4), torch.ones(2, 1, 1, 4))
    with pytest.raises(ValueError, match="max_len=3"):
        cache.advance(2)


def test_swiglu_and_rmsnorm_formulas():
    torch.manual_seed(0)
    ffn = FeedForward(8, 16, activation="swiglu", bias=False)
    x = torch.randn(3, 8)
    expected = ffn.down_proj(torch.nn.functional.silu(ffn.gate_proj(x)) * ffn.up_proj(x))
    assert torch.allclose(ffn(x), expected)
    norm = make_norm("rmsnorm", 8, 1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    expected = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert torch.allclose(norm(x), expected, atol=1e-6)
    assert norm(x.bfloat16()).dtype == torch.bfloat16
    relu = FeedForward(8, 16, activation="relu")  # xlm-core's default MLP
    assert torch.allclose(relu(x), relu.down_proj(torch.relu(relu.up_proj(x))))
    with pytest.raises(ValueError, match="activation"):
        FeedForward(8, 16, activation="tanh")
    with pytest.raises(ValueError, match="norm"):
        make_norm("batchnorm", 8, 1e-5)


def test_block_is_pre_ln():
    torch.manual_seed(0)
    block = TransformerBlock(dim=16, num_heads=2, ffn_dim=32).eval()
    x = torch.randn(1, 4, 16)
    h = x + block.attn(block.attn_norm(x))
    assert torch.allclose(block(x), h + block.ffn(block.ffn_norm(h)), atol=1e-6)


@pytest.mark.parametrize("bias, attn_bias, expected", [(True, None, True), (False, None, False),
                                                       (True, False, False), (False, True, True)])
def test_attention_biases_follow_attn_bias_or_else_bias(bias, attn_bias, expected):
    block = TransformerBlock(dim=16, num_heads=2, ffn_dim=32, bias=bias, attn_bias=attn_bias)
    names = {name for name, _ in block.named_parameters() if name.endswith(".bias")}
    attention = {f"attn.{p}.bias" for p in ("q_proj", "k_proj", "v_proj", "out_proj")}
    assert names & attention == (attention if expected else set())
    assert bool(names - attention) is bias  # the MLP and the norms keep `bias`
    # the fused CPU training path runs bias-free attention as it is
    torch.manual_seed(0)
    x = torch.randn(2, 5, 16)
    before = block(x)
    accelerate_training(block)
    assert torch.allclose(block(x), before, atol=1e-6)
