import math

import pytest
import torch

import xlm
from xlm.data.tokenizers import WordTokenizer
from xlm.models.arlm.collators import ArlmSeq2SeqCollator, ArlmSeq2SeqPredictCollator
from xlm.models.arlm.loss import arlm_loss
from xlm.models.arlm.predictor import ArlmPredictor, ArlmSamplerConfig
from xlm.nn.cpu.prepacked import can_prepack

TOK = WordTokenizer(["a", "b", "c"])  # a=7 b=8 c=9
V = TOK.vocab_size
BOS, EOS, PAD = TOK.bos_token_id, TOK.eos_token_id, TOK.pad_token_id


class Bigram(torch.nn.Module):
    """Next-token logits depend only on the current token: small enough to compute by hand."""

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = torch.nn.Parameter(table)

    def forward(self, input_ids, attention_mask=None, output_positions=None, **_):
        logits = self.table[input_ids]
        return logits if output_positions is None else logits[output_positions]


def test_loss_matches_hand_computation():
    table = torch.zeros(V, V)
    table[BOS, 8] = math.log(3.0)  # after [BOS]: b has weight 3, the other V-1 tokens weight 1
    table[8, EOS] = math.log(4.0)  # after b: [EOS] has weight 4
    batch = ArlmSeq2SeqCollator(TOK, 16)([{"prompt_ids": [7], "target_ids": [8]}])  # a [BOS] b [EOS]
    out = arlm_loss(Bigram(table), batch)
    nll_b = -math.log(3.0 / (3.0 + V - 1))
    nll_eos = -math.log(4.0 / (4.0 + V - 1))
    assert out["num_tokens"].item() == 2
    assert out["nll_sum"].item() == pytest.approx(nll_b + nll_eos, rel=1e-6)
    assert out["loss"].item() == pytest.approx((nll_b + nll_eos) / 2, rel=1e-6)


def test_each_row_stops_at_its_own_eos():
    table = torch.full((V, V), -10.0)
    table[BOS, 7] = 5.0   # [BOS] -> a
    table[7, 8] = 5.0     # a -> b
    table[8, 9] = 5.0     # b -> c
    table[9, EOS] = 5.0   # c -> [EOS]
    table[PAD, PAD] = 5.0
    batch = ArlmSeq2SeqPredictCollator(TOK, 16)([{"prompt_ids": [7]}, {"prompt_ids": [9]}])
    predictor = ArlmPredictor(Bigram(table), TOK, ArlmSamplerConfig(use_kv_cache=False, max_new_tokens=10))
    out = predictor.predict(batch)
    assert out["text"] == ["a b c", "a b c"]
    tail = out["sequences"][:, out["start"]:].tolist()
    assert tail[0][:4] == [7, 8, 9, EOS]
    assert all(len(row) == 4 for row in tail)  # generation ended once both rows had [EOS]


def _tiny_model(**overrides):
    torch.manual_seed(0)
    return xlm.create_model("arlm_tiny", vocab_size=V, **overrides).eval()


@pytest.mark.parametrize("pos_encoding", ["rope", "learned"])
@pytest.mark.parametrize("strategy", ["greedy", "sample"])
@pytest.mark.parametrize("prepack", [True, False])  # decode steps with weights reordered once (xlm.nn.cpu.prepacked)
def test_kv_cache_generation_equals_recomputation(pos_encoding, strategy, prepack):
    # 256 x 1024 feed-forward weights: large enough for xlm.nn.cpu.prepacked to reorder them
    model = _tiny_model(pos_encoding=pos_encoding, model_dim=256, num_heads=4, ffn_dim=1024)
    batch = ArlmSeq2SeqPredictCollator(TOK, 256)([{"prompt_ids": [7, 8, 9, 7]}, {"prompt_ids": [9]}])
    outs = []
    for use_cache in (True, False):
        cfg = ArlmSamplerConfig(strategy=strategy, top_k=5, top_p=0.9, max_new_tokens=12, use_kv_cache=use_cache,
                                prepack_weights=prepack)
        gen = torch.Generator().manual_seed(123)
        predictor = ArlmPredictor(model, TOK, cfg)
        packed_at_steps: list[bool] = []  # whichever kernel was timed faster, the layers hold its weights
        predictor.on_step = lambda *_: packed_at_steps.append("project_qkv" in model.layers[0].attn.__dict__)
        outs.append(predictor.generate(batch["input_ids"], batch["attention_mask"], generator=gen))
        assert packed_at_steps and set(packed_at_steps) == {prepack and use_cache and can_prepack(model)}
        assert "project_qkv" not in model.layers[0].attn.__dict__
    assert torch.equal(outs[0], outs[1])
