"""Text rows read with a model's own HF tokenizer (saved by transformers) are framed as that model was trained:
GPT-2's one <|endoftext|> between documents (it used to be two), BERT's [CLS] doc [SEP] (it used to be refused:
no [BOS]), Llama's <s> doc </s> (its tokenizer places <s> itself; it used to be doubled)."""

import pytest

from xlm.data.corpora import pydoc_paragraphs
from xlm.data.framing import DocumentFrame
from xlm.data.hf_tokenizer import HFTokenizer
from xlm.data.tasks import build_task, task_config
from xlm.data.tasks.text import TextSource, raw_split

transformers = pytest.importorskip("transformers")
from tests.hf_tokenizers import bert_tokenizer, gpt2_tokenizer, llama_tokenizer  # noqa: E402  (needs transformers)


def _as_trained(kind, tokenizer, text):
    """A document as the model was trained on it: GPT-2 after an <|endoftext|>, the others as their tokenizer
    frames it plus Llama's closing </s>."""
    ids = tokenizer(text)["input_ids"]
    if kind == "gpt2":
        return [tokenizer.eos_token_id, *ids]
    return ids + ([tokenizer.eos_token_id] if kind == "llama" else [])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(pydoc_paragraphs()[:90]), encoding="utf-8")
    return path


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bert"])
def test_a_models_own_tokenizer_frames_each_document_as_the_model_was_trained(kind, corpus, tmp_path):
    hf = {"gpt2": gpt2_tokenizer, "llama": llama_tokenizer, "bert": bert_tokenizer}[kind]()
    hf.save_pretrained(tmp_path)
    own = HFTokenizer.of_model(tmp_path)
    texts = raw_split(TextSource(data_files=str(corpus)), "validation")["text"]
    expected_stream = [tok for text in texts for tok in _as_trained(kind, hf, text)]

    packed = build_task(task_config("text", data_files=str(corpus), block_size=32), tokenizer=own)
    rows = packed.dataset("validation")["input_ids"]
    assert len(rows) > 3 and [tok for row in rows for tok in row] == expected_stream[: 32 * len(rows)]

    single = build_task(task_config("text", data_files=str(corpus), block_size=2048, packing=False), tokenizer=own)
    last = [hf.eos_token_id] if kind != "bert" else [hf.sep_token_id]  # a row of its own ends the document
    assert single.dataset("validation")["input_ids"] == [
        _as_trained(kind, hf, text) + (last if kind == "gpt2" else []) for text in texts]
    cut = build_task(task_config("text", data_files=str(corpus), block_size=8, packing=False), tokenizer=own)
    assert {(len(row), row[-1]) for row in cut.dataset("validation")["input_ids"]} == {(8, last[0])}


def test_the_frame_leaves_out_what_a_tokenizer_lacks_and_what_its_encoding_placed():
    bert_like = DocumentFrame(start=2, end=3)
    assert bert_like.packed([2, 10, 11, 3]) == bert_like.packed([10, 11]) == [2, 10, 11, 3]
    assert bert_like.row([2, 10, 11, 12, 3], 4) == [2, 10, 11, 3]
    gpt2_like = DocumentFrame(start=0, end=0)
    assert gpt2_like.packed([10, 11]) + gpt2_like.packed([12]) == [0, 10, 11, 0, 12]
    assert gpt2_like.row([10, 11, 12], 4) == [0, 10, 11, 0]
    bare = DocumentFrame(start=None, end=None)
    assert bare.packed([10, 11]) == bare.row([10, 11, 12], 2) == [10, 11]
