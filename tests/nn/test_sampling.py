import torch

from xlm.nn.sampling import filter_logits, select_tokens


def test_top_k_keeps_the_k_largest_logits():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, True, False]]


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]


def test_temperature_is_applied_to_logits():
    # at temperature 0.5 the sampling distribution is softmax(2 * logits)
    logits = torch.tensor([0.0, 1.0]).expand(20000, 2)
    draws = select_tokens(logits, greedy=False, temperature=0.5, generator=torch.Generator().manual_seed(0))
    expected = torch.softmax(torch.tensor([0.0, 2.0]), -1)[1].item()
    assert abs(draws.float().mean().item() - expected) < 0.02


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 0.7, 0.2], [3.0, 1.0, 2.0]])
    assert select_tokens(logits, greedy=True).tolist() == [1, 0]
