import pytest
import torch

from xlm.data.tokenizers import WordTokenizer
from xlm.models.ilm.collators import IlmPredictCollator
from xlm.models.ilm.predictor import IlmPredictor, IlmSamplerConfig, insert_columns

TOK = WordTokenizer([str(i) for i in range(10)])  # "0" -> 7, ..., "9" -> 16
V = TOK.vocab_size
PAD, CLS, BOS, MASK = TOK.pad_token_id, TOK.cls_token_id, TOK.bos_token_id, TOK.mask_token_id


class Oracle(torch.nn.Module):
    """Knows each row's full truth ([CLS] prompt [BOS] target). All the mass goes to true missing
    tokens at true gaps: at every gap of the current row that misses tokens, the middle missing one
    gets logit 0 (so several gaps are open at once and multi-insertion has something to do), every
    other (gap, token) pair -inf. Its stop logit says stop iff nothing is missing (`stops=False`:
    never), or once a row holds a token the truth cannot explain. Records the rows it sees.

    The predictor only shows it the rows still going, in batch order; a row is told from the others
    by what it held in the last call (a row only grows), so the oracle follows each row to its truth
    as the batch gets smaller."""

    def __init__(self, truths: list[list[int]], *, certainty: float = 30.0, stops: bool = True) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the predictor reads the device from parameters
        self.truths = truths
        self.certainty = certainty
        self.stops = stops
        self.calls = 0
        self.rows_seen: list[dict[int, list[int]]] = []  # per call: truth index -> the row shown
        self.last: list[tuple[int, list[int]]] = []  # (truth index, row) of the rows in the last call
        self.widths: list[int] = []  # columns of each call's input

    def _which_truths(self, rows: list[list[int]]) -> list[int]:
        if len(rows) == len(self.truths):  # no row has stopped yet (or a new generation)
            return list(range(len(rows)))
        which, earlier = [], iter(self.last)
        for row in rows:  # each row grew from the first remaining earlier row it contains, in order
            for index, before in earlier:
                rest = iter(row)
                if all(token in rest for token in before):
                    which.append(index)
                    break
            else:
                raise AssertionError(f"row {row} grew from none of the rows of the last call")
        return which

    def forward(self, input_ids, attention_mask=None, positions=None):
        self.calls += 1
        batch, seq = input_ids.shape
        mask = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask
        logits = torch.full((batch, seq, V), float("-inf"))
        stop = torch.zeros(batch, 2)
        row_cols = [sorted((c for c in range(seq) if mask[b, c]), key=lambda c: int(positions[b, c]))
                    for b in range(batch)]
        seen = [[int(input_ids[b, c]) for c in cols] for b, cols in enumerate(row_cols)]
        which = self._which_truths(seen)
        self.last = list(zip(which, seen))
        for b, (cols, row, truth) in enumerate(zip(row_cols, seen, (self.truths[i] for i in which))):
            match, t = [], 0
            for token in row:  # align the row to the truth (a subsequence of it unless a wrong token went in)
                while t < len(truth) and truth[t] != token:
                    t += 1
                match.append(t)
                t += 1
            if t > len(truth):  # off the truth: nothing is right to insert any more, say stop
                stop[b] = torch.tensor([self.certainty, 0.0])
                continue
            missing = False
            for i, col in enumerate(cols):
                following = match[i + 1] if i + 1 < len(cols) else len(truth)
                if following > match[i] + 1:
                    logits[b, col, truth[(match[i] + 1 + following) // 2]] = 0.0
                    missing = True
            stop[b] = torch.tensor([0.0, self.certainty] if missing or not self.stops else [self.certainty, 0.0])
        self.rows_seen.append(dict(zip(which, seen)))
        self.widths.append(seq)
        return logits, stop


EXAMPLES = [{"prompt_ids": [7, 8, 9, 10], "target_ids": [11, 12, 11, 13, 12, 11, 14]},
            {"prompt_ids": [15], "target_ids": [16, 7]},
            {"prompt_ids": [8, 8], "target_ids": [9, 9, 9, 10, 11]}]
UNCONDITIONAL = [[7, 7, 8, 9, 7], [16], [10, 11, 12, 13, 14, 15, 16, 7, 8]]
TOKEN_CHOICES = [dict(strategy="greedy"), dict(strategy="sample"), dict(strategy="sample", temperature=0.5),
                 dict(strategy="sample", top_k=3), dict(strategy="sample", top_p=0.9)]


def case(mode: str):
    collate = IlmPredictCollator(TOK, max_new_tokens=12, max_len=64)
    if mode == "seq2seq":
        truths = [[CLS, *ex["prompt_ids"], BOS, *ex["target_ids"]] for ex in EXAMPLES]
        return collate(EXAMPLES), truths, [ex["target_ids"] for ex in EXAMPLES]
    return collate([{}] * 3), [[CLS, BOS, *t] for t in UNCONDITIONAL], UNCONDITIONAL


def run(mode: str, *, generator_seed: int = 0, **config):
    batch, truths, targets = case(mode)
    model = Oracle(truths)
    cfg = IlmSamplerConfig(**({"max_new_tokens": 12} | config))
    out = IlmPredictor(model, TOK, cfg).predict(batch, generator=torch.Generator().manual_seed(generator_seed))
    return out, model, truths, targets


@pytest.mark.parametrize("mode", ["seq2seq", "unconditional"])
@pytest.mark.parametrize("tokens", TOKEN_CHOICES, ids=lambda t: "-".join(map(str, t.values())))
def test_oracle_target_is_rebuilt_exactly_and_stops(mode, tokens):
    out, model, truths, targets = run(mode, **tokens)
    assert out["ids"] == targets
    assert out["text"] == [TOK.decode(t) for t in targets]
    assert out["sequences"] == truths  # prompts untouched, every token at its place
    assert out["num_inserted"] == [len(t) for t in targets]
    # one insertion per call, and one more call that says stop for the longest row
    assert out["num_model_calls"] == model.calls == max(len(t) for t in targets) + 1
    assert out["row_calls"] == [len(t) + 1 for t in targets]  # each row: its insertions and its stop call


@pytest.mark.parametrize("mode", ["seq2seq", "unconditional"])
@pytest.mark.parametrize("tokens", TOKEN_CHOICES[:2], ids=lambda t: "-".join(map(str, t.values())))
def test_multi_insertion_gives_the_same_result_in_fewer_calls(mode, tokens):
    single, _, _, targets = run(mode, **tokens)
    multi, model, truths, _ = run(mode, insertions_per_step=3, **tokens)
    assert multi["ids"] == single["ids"] == targets and multi["sequences"] == truths
    assert multi["num_model_calls"] < single["num_model_calls"]
    # one by one: a call per token of the longest target (7 or 9) and a stop call; three at a time the
    # open gaps go 1, 2, 3, 3 (one more step when equally sure gaps are taken in an unlucky order)
    assert single["num_model_calls"] == max(map(len, targets)) + 1 and 5 <= multi["num_model_calls"] <= 6
    # no step inserted more than 3 tokens into a row
    steps = zip(model.rows_seen, model.rows_seen[1:])
    assert all(0 <= len(after[i]) - len(before[i]) <= 3 for before, after in steps for i in after)


class LeakyOracle(Oracle):
    """The oracle, but like a trained model: every pair it rules out keeps a little mass (logit
    `leak` instead of -inf), complete gaps included."""

    def __init__(self, truths, *, leak: float = -6.0) -> None:
        super().__init__(truths)
        self.leak = leak

    def forward(self, input_ids, attention_mask=None, positions=None):
        logits, stop = super().forward(input_ids, attention_mask=attention_mask, positions=positions)
        return logits.clamp(min=self.leak), stop


@pytest.mark.parametrize("k", [1, 3])
def test_the_model_runs_only_on_rows_still_going_and_their_real_columns(k):
    out, model, truths, _ = run("seq2seq", insertions_per_step=k)
    assert out["sequences"] == truths
    # call c shows the rows that took part in at least c + 1 calls, each at its length so far, and no wider
    # than the longest of them: finished rows and the [PAD] columns of rows that inserted less are left out
    for call, shown in enumerate(model.rows_seen):
        assert sorted(shown) == [b for b, n in enumerate(out["row_calls"]) if n > call]
    assert model.widths == [max(map(len, shown.values())) for shown in model.rows_seen]
    assert len(set(model.widths)) > 1 and out["row_calls"] != [out["num_model_calls"]] * 3


@pytest.mark.parametrize("mode", ["seq2seq", "unconditional"])
def test_multi_insertion_leaves_complete_gaps_alone(mode):
    batch, truths, targets = case(mode)
    cfg = IlmSamplerConfig(max_new_tokens=12, insertions_per_step=3)
    out = IlmPredictor(LeakyOracle(truths), TOK, cfg).predict(batch)
    assert out["ids"] == targets and out["sequences"] == truths
    assert max(out["row_calls"]) < max(len(t) for t in targets) + 1  # still fewer calls than one by one
    # taking the 3 best gaps whatever their probability puts tokens into complete gaps
    careless = IlmSamplerConfig(max_new_tokens=12, insertions_per_step=3, multi_insertion_min_ratio=1e-6)
    assert IlmPredictor(LeakyOracle(truths), TOK, careless).predict(batch)["ids"] != targets


class TwoReadings(torch.nn.Module):
    """Target "7 7". Once one 7 is in, the model cannot tell whether the other goes before or after
    it and splits its mass between the two gaps; it stops at two 7s."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask=None, positions=None):
        batch, seq = input_ids.shape
        logits = torch.full((batch, seq, V), float("-inf"))
        sevens = int((input_ids[0] == 7).sum())
        if sevens < 2:
            logits[0, (input_ids[0] == BOS) | (input_ids[0] == 7), 7] = 0.0
        stop = torch.tensor([[30.0, 0.0] if sevens >= 2 else [0.0, 30.0]])
        return logits, stop


def test_multi_insertion_does_not_insert_one_token_twice_in_a_step():
    batch = IlmPredictCollator(TOK, max_new_tokens=4, max_len=64)([{"prompt_ids": [8]}])
    out = IlmPredictor(TwoReadings(), TOK, IlmSamplerConfig(max_new_tokens=4, insertions_per_step=2)).predict(batch)
    assert out["text"] == ["0 0"]  # both readings taken at once would give "0 0 0"


def test_on_step_reports_rows_in_order_with_the_insertions_marked():
    batch, truths, targets = case("seq2seq")
    steps = []
    predictor = IlmPredictor(Oracle(truths), TOK, IlmSamplerConfig(max_new_tokens=12, insertions_per_step=2))
    predictor.on_step = steps.append
    out = predictor.predict(batch)
    assert [s["step"] for s in steps] == list(range(len(steps))) and len(steps) == out["num_model_calls"] - 1
    previous = [[t for t in row if t != PAD] for row in batch["input_ids"].tolist()]
    for step in steps:
        for b, (row, changed) in enumerate(zip(step["rows"], step["changed"])):
            real = [t for t in row if t != PAD]
            assert row[: len(real)] == real  # padding last
            assert [t for i, t in enumerate(real) if i not in changed] == previous[b]  # the rest kept its order
            assert len(changed) <= 2
            previous[b] = real
    assert previous == out["sequences"] == truths


class ClsReadingOracle(Oracle):
    """The oracle, told where [CLS] is (as IlmModel is); records the token each call's `cls_position` points at."""

    def __init__(self, truths: list[list[int]]) -> None:
        super().__init__(truths)
        self.cls_tokens: list[list[int]] = []

    def forward(self, input_ids, attention_mask=None, positions=None, cls_position=None):
        self.cls_tokens.append(input_ids.gather(1, cls_position[:, None]).squeeze(1).tolist())
        return super().forward(input_ids, attention_mask, positions)


def test_left_padded_prefixes_with_cls_position_predict_as_ours():
    """xlm-core's prefix batches put the padding before [CLS] ([PAD]... [CLS] prompt [BOS]) and say where [CLS]
    is; the model must be shown that column in every call, whatever rows are still going."""
    ours, truths, targets = case("seq2seq")
    pad = (ours["input_ids"][:, 1:] == PAD).sum(1)  # [CLS] [PAD]... prompt [BOS] -> [PAD]... [CLS] prompt [BOS]
    theirs = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in ours.items()}
    for b, k in enumerate(pad.tolist()):
        theirs["input_ids"][b, : k + 1] = torch.tensor([PAD] * k + [CLS])
        theirs["attention_mask"][b, : k + 1] = torch.tensor([False] * k + [True])
    theirs["cls_position"] = pad
    assert pad.tolist() == [0, 3, 2]
    config = IlmSamplerConfig(max_new_tokens=12)
    expected = IlmPredictor(Oracle(truths), TOK, config).predict(ours)
    model = ClsReadingOracle(truths)
    out = IlmPredictor(model, TOK, config).predict(theirs)
    assert out["ids"] == expected["ids"] == targets and out["num_model_calls"] == expected["num_model_calls"]
    assert model.cls_tokens and all(token == CLS for call in model.cls_tokens for token in call)


def test_insert_columns_updates_positions():
    # row: [CLS] [BOS] a b in columns 0..3, but stored out of order: columns hold CLS, b, BOS, a
    tokens = torch.tensor([[CLS, 8, BOS, 7]])
    positions = torch.tensor([[0, 3, 1, 2]])
    mask = torch.ones_like(tokens, dtype=torch.bool)
    # insert x=9 after [BOS] (column 2) and y=10 after b (column 1); a third slot unused
    out_tokens, out_pos, out_mask, appended = insert_columns(
        tokens, positions, mask, torch.tensor([[2, 1, 0]]), torch.tensor([[9, 10, 11]]),
        torch.tensor([[True, True, False]]), PAD)
    assert out_tokens.tolist() == [[CLS, 8, BOS, 7, 9, 10, PAD]]
    assert out_mask.tolist() == [[True] * 6 + [False]] and appended.tolist() == [[True, True, False]]
    order = sorted((p, t) for t, p, m in zip(out_tokens[0].tolist(), out_pos[0].tolist(), out_mask[0].tolist()) if m)
    assert [t for _, t in order] == [CLS, BOS, 9, 7, 8, 10]
    assert sorted(p for p, _ in order) == list(range(6))  # positions stay a permutation of 0..n-1


def test_stops_at_max_new_tokens_when_the_model_never_says_stop():
    batch, truths, targets = case("seq2seq")
    for k in (1, 3):
        model = Oracle(truths, stops=False)
        cfg = IlmSamplerConfig(max_new_tokens=4, insertions_per_step=k)
        out = IlmPredictor(model, TOK, cfg).predict(batch)
        # row 1's target has 2 tokens: once it is complete the oracle leaves no pair to insert
        assert out["num_inserted"] == [4, 2, 4]
        for ids, target in zip(out["ids"], targets):  # what was inserted is a subsequence of the target
            it = iter(target)
            assert all(t in it for t in ids)


def test_max_steps_bounds_the_model_calls():
    batch, truths, _ = case("seq2seq")
    model = Oracle(truths)
    out = IlmPredictor(model, TOK, IlmSamplerConfig(max_new_tokens=12, max_steps=2)).predict(batch)
    assert out["num_model_calls"] == model.calls == 2 and out["num_inserted"] == [2, 2, 2]


class ConstantStop(torch.nn.Module):
    """Stop probability `p` whatever the input; uniform token logits."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.logit = torch.logit(torch.tensor(p)).item()

    def forward(self, input_ids, attention_mask=None, positions=None):
        batch, seq = input_ids.shape
        return torch.zeros(batch, seq, V), torch.tensor([[self.logit, 0.0]]).expand(batch, 2)


@pytest.mark.parametrize("threshold, inserted", [(0.5, 0), (0.69, 0), (0.71, 5), (1.0, 5)])
def test_stop_threshold(threshold, inserted):
    batch = IlmPredictCollator(TOK, max_new_tokens=5, max_len=64)([{}])
    cfg = IlmSamplerConfig(max_new_tokens=5, stop_threshold=threshold)
    out = IlmPredictor(ConstantStop(0.7), TOK, cfg).predict(batch)
    assert out["num_inserted"] == [inserted]


def test_never_inserts_into_the_prompt_nor_special_tokens():
    batch, truths, _ = case("seq2seq")
    adversary = Oracle(truths)
    base = adversary.forward

    def forward(input_ids, positions, **kwargs):
        logits, stop = base(input_ids, positions=positions, **kwargs)
        bos_position = positions.masked_fill(input_ids != BOS, 0).amax(1, keepdim=True)
        logits[positions < bos_position] = 100.0  # [CLS], the prompt and the padding between them
        logits[..., PAD] = logits[..., MASK] = logits[..., CLS] = 200.0
        return logits, stop

    adversary.forward = forward
    for tokens in TOKEN_CHOICES:
        for k in (1, 3):
            out = IlmPredictor(adversary, TOK, IlmSamplerConfig(max_new_tokens=12, insertions_per_step=k, **tokens)
                               ).predict(batch, generator=torch.Generator().manual_seed(0))
            assert out["sequences"] == truths, tokens


def test_sampling_is_reproducible_with_a_generator():
    batch = IlmPredictCollator(TOK, max_new_tokens=6, max_len=64)([{}, {}])
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.anchor = torch.nn.Parameter(torch.zeros(()))
    table = torch.randn(64, V)
    model.forward = lambda ids, **_: (table[: ids.size(1)].expand(ids.size(0), -1, -1) * 3, torch.zeros(ids.size(0), 2))
    for k in (1, 2):
        cfg = IlmSamplerConfig(max_new_tokens=6, strategy="sample", stop_threshold=1.0, insertions_per_step=k)
        runs = [IlmPredictor(model, TOK, cfg).predict(batch, generator=torch.Generator().manual_seed(s))["ids"]
                for s in (1, 1, 2)]
        assert runs[0] == runs[1] != runs[2]


@pytest.mark.parametrize("overrides, message", [
    (dict(max_new_tokens=0), "max_new_tokens must be >= 1"),
    (dict(strategy="beam"), r"strategy must be one of \('greedy', 'sample'\), got 'beam'"),
    (dict(temperature=-1.0), "temperature must be >= 0"),
    (dict(top_k=0), "top_k must be >= 1 or null"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(stop_threshold=1.5), r"stop_threshold must be a probability in \[0, 1\]"),
    (dict(max_steps=0), "max_steps must be >= 1 or null"),
    (dict(insertions_per_step=0), "insertions_per_step must be >= 1"),
    (dict(multi_insertion_min_ratio=0.0), r"multi_insertion_min_ratio must be in \(0, 1\]"),
])
def test_sampler_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        IlmSamplerConfig(**overrides)
