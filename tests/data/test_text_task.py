"""The text task: blocks with [BOS]/[EOS], held-out splits, tokenizers trained or loaded, caching,
and errors for bad sources. The corpus is CPython's own help text (xlm.data.corpora)."""

import json

import re

import pytest
import torch
from tokenizers import Tokenizer as RawHFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from xlm.data.corpora import pydoc_corpus, pydoc_paragraphs
from xlm.data.framing import DocumentFrame
from xlm.data.hf_tokenizer import HFTokenizer
from xlm.data.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece
from xlm.data.tasks import build_task
from xlm.data.tasks.text import TextSource, TextTaskConfig, blocks_from_documents, raw_split
from xlm.data.tokenizers import SPECIAL_TOKENS, tokenizer_from_spec
from xlm.errors import InvalidValueError
from xlm.recipes import train_tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return pydoc_corpus(tmp_path_factory.mktemp("corpus") / "pydoc.txt")


def test_packing_concatenates_documents_into_full_blocks():
    docs = [[10, 11, 12], [20], [30, 31, 32, 33]]
    assert blocks_from_documents(docs, frame=DocumentFrame(start=4, end=3), block_size=4, packing=True) == [
        [4, 10, 11, 12], [3, 4, 20, 3], [4, 30, 31, 32]]  # the tail [33, 3] is shorter than a block: dropped
    assert blocks_from_documents(docs, frame=DocumentFrame(start=4, end=3), block_size=4, packing=False) == [
        [4, 10, 11, 3], [4, 20, 3], [4, 30, 31, 3]]
    with pytest.raises(ValueError, match="block_size must be >= 3"):
        blocks_from_documents(docs, frame=DocumentFrame(start=4, end=3), block_size=2, packing=True)


def test_held_out_splits_are_disjoint_and_cover_the_corpus(corpus):
    source = TextSource(data_files=str(corpus), held_out_fraction=0.1)
    splits = {s: raw_split(source, s)["text"] for s in ("train", "validation", "test")}
    assert len(splits["validation"]) == len(splits["test"]) == int(len(pydoc_paragraphs()) * 0.1)
    assert not set(splits["validation"]) & set(splits["test"])
    assert not set(splits["train"]) & (set(splits["validation"]) | set(splits["test"]))
    assert sum(len(v) for v in splits.values()) == len(pydoc_paragraphs())


def test_task_trains_a_tokenizer_packs_blocks_and_caches(corpus):
    config = TextTaskConfig(data_files=str(corpus), tokenizer_vocab_size=600, block_size=64)
    task = build_task(config)
    assert not task.is_seq2seq and task.max_seq_len == 64
    assert isinstance(task.tokenizer, SentencePieceTokenizer) and task.tokenizer.vocab_size == 600
    train = task.dataset("train")
    rows = train["input_ids"]
    assert all(len(r) == 64 for r in rows)
    flat = [t for r in rows for t in r]
    assert flat.count(task.tokenizer.bos_token_id) >= flat.count(task.tokenizer.eos_token_id) - 1 > 100
    assert task.tokenizer.mask_token_id not in flat and task.tokenizer.pad_token_id not in flat
    # the first document is the first block's text after [BOS]
    first_doc = raw_split(task.source, "train")["text"][0]
    assert task.tokenizer.decode(rows[0][1:20]) in first_doc
    # a second task reads the same tokenizer and the cached split
    again = build_task(config)
    assert again.tokenizer.spec() == task.tokenizer.spec()
    assert again.dataset("train").cache_files == train.cache_files
    # train_size limits; another block size is another cache entry
    assert len(build_task(TextTaskConfig(data_files=str(corpus), tokenizer_vocab_size=600, block_size=64,
                                     train_size=5)).dataset("train")) == 5
    other = build_task(TextTaskConfig(data_files=str(corpus), tokenizer_vocab_size=600, block_size=32))
    assert len(other.dataset("train")) > len(train)


def test_unpacked_rows_are_single_documents(corpus):
    task = build_task(TextTaskConfig(data_files=str(corpus), tokenizer_vocab_size=600, block_size=48,
                                 packing=False))
    rows = task.dataset("validation")["input_ids"]
    assert len(rows) == len(raw_split(task.source, "validation"))
    assert all(r[0] == task.tokenizer.bos_token_id and r[-1] == task.tokenizer.eos_token_id and len(r) <= 48
               for r in rows)


def test_train_tokenizer_recipe_writes_a_model_the_task_loads(corpus, tmp_path, capsys):
    out = tmp_path / "tok.model"
    assert train_tokenizer.main(["--data-files", str(corpus), "--vocab-size", "300", "--model-type", "bpe",
                                 "--output", str(out)]) == 0
    tokenizer = SentencePieceTokenizer.from_file(out)
    assert [tokenizer._sp.id_to_piece(i) for i in range(7)] == list(SPECIAL_TOKENS)
    assert tokenizer.decode(tokenizer.encode("the for statement")) == "the for statement"
    task = build_task(TextTaskConfig(data_files=str(corpus), tokenizer=str(out), block_size=32))
    assert task.tokenizer.spec() == tokenizer.spec()
    assert train_tokenizer.main(["--data-files", str(corpus), "--vocab-size", "100000", "--output",
                                 str(tmp_path / "big.model")]) == 2
    err = capsys.readouterr().err
    assert "--vocab-size=100000: Vocabulary size too high (100000). Please set it to a value <=" in err
    assert "trainer_interface.cc" not in err  # SentencePiece's source location is not the user's business
    with pytest.raises(InvalidValueError, match=r"task.tokenizer_vocab_size=100000: Vocabulary size too high"):
        build_task(TextTaskConfig(data_files=str(corpus), tokenizer_vocab_size=100000, block_size=32))
    with open(out, "rb") as reader:  # a task reading the model while it is rewritten sees it whole
        before = out.read_bytes()
        assert train_tokenizer.main(["--data-files", str(corpus), "--vocab-size", "200", "--output", str(out)]) == 0
        assert reader.read() == before and out.read_bytes() != before  # replaced by a rename, not in place
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    capsys.readouterr()
    for extra, says in ((["--vocab-size", "0"], "--vocab-size must be more than xlm's 7 special tokens"),
                        (["--vocab-size", "300", "--max-documents", "0"], "--max-documents must be >= 1, got 0"),
                        (["--vocab-size", "300", "--text-column", "txt"],  # the option, not the task's setting
                         "no column 'txt' (columns: ['text']); set task.text_column (xlm train-tokenizer: "
                         "--text-column)")):  # the first two said "cannot train ...: " and no reason
        assert train_tokenizer.main(["--data-files", str(corpus), *extra, "--output", str(tmp_path / "x.model")]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x.model").exists()


def test_train_tokenizer_says_how_many_ids_the_characters_need_and_takes_a_character_coverage(tmp_path, capsys):
    common, rare = "the quick brown fox jumps over the lazy dog", "αβγδεζηθικλμνξοπρστυφχψω"  # rare: 1 in 4,400 each
    corpus = tmp_path / "corpus.txt"
    corpus.write_text((f"{common}\n" * 100 + rare + "\n") * 5, encoding="utf-8")
    out = tmp_path / "tok.model"
    args = ["--data-files", str(corpus), "--vocab-size", "35", "--output", str(out)]
    assert train_tokenizer.main(args) == 2
    err = capsys.readouterr().err
    # SentencePiece said "... decrease character_coverage with --character_coverage option", an option xlm lacks
    needed = int(re.search(r"need (\d+) ids", err).group(1))
    assert needed == len(set(common) | set(rare)) + len(SPECIAL_TOKENS)  # the space is a piece too
    assert err == (f"error: --vocab-size=35 is too small for this corpus: its characters and xlm's 7 special tokens "
                   f"need {needed} ids; set --vocab-size to at least {needed}, or --character-coverage lower (now "
                   f"1.0, down to 0.98) to leave the rarest characters to [UNK]\n")
    assert not out.exists()
    with pytest.raises(InvalidValueError, match=re.escape(  # the text task trains its own: it names the command
            f"task.tokenizer_vocab_size=35 is too small for this corpus: its characters and xlm's 7 special tokens "
            f"need {needed} ids; set task.tokenizer_vocab_size to at least {needed}, or train one that leaves the "
            f"rarest characters to [UNK] (`xlm train-tokenizer --character-coverage 0.98`) and give it as "
            f"task.tokenizer")):
        build_task(TextTaskConfig(data_files=str(corpus), tokenizer_vocab_size=35, block_size=32))
    assert train_tokenizer.main([*args, "--character-coverage", "0.98"]) == 0
    tokenizer = SentencePieceTokenizer.from_file(out)
    assert tokenizer.unk_token_id in tokenizer.encode("α")
    assert tokenizer.decode(tokenizer.encode("the lazy fox")) == "the lazy fox"
    capsys.readouterr()
    assert train_tokenizer.main([*args, "--character-coverage", "0.5"]) == 2
    assert capsys.readouterr().err == ("error: --character-coverage must be in [0.98, 1] (the share of the corpus's "
                                       "characters the vocabulary covers, as SentencePiece takes it), got 0.5\n")


def _gpt2_like_tokenizer_json(corpus, path):
    raw = RawHFTokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train([str(corpus)], trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"]))
    raw.save(str(path))
    return path


def test_hf_tokenizer_maps_roles_and_adds_the_missing_ones(corpus, tmp_path):
    file = _gpt2_like_tokenizer_json(corpus, tmp_path / "tokenizer.json")
    base_size = json.loads(file.read_text())["model"]["vocab"].__len__()
    tokenizer = HFTokenizer.from_file(tmp_path)
    endoftext = tokenizer._tok.token_to_id("<|endoftext|>")
    assert tokenizer.eos_token_id == tokenizer.bos_token_id == endoftext  # GPT-2's one special fills both
    added = {tokenizer.pad_token_id, tokenizer.mask_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
             tokenizer.unk_token_id}
    assert added == set(range(base_size, base_size + 5)) and tokenizer.vocab_size == base_size + 5
    ids = tokenizer.encode("Assignment statements bind names")
    assert tokenizer.decode(ids) == "Assignment statements bind names"
    assert tokenizer.decode([tokenizer.mask_token_id, *ids]) == "Assignment statements bind names"
    rebuilt = tokenizer_from_spec(json.loads(json.dumps(tokenizer.spec())))
    assert rebuilt.encode("a while loop") == tokenizer.encode("a while loop")
    assert rebuilt.mask_token_id == tokenizer.mask_token_id and rebuilt.vocab_size == tokenizer.vocab_size
    task = build_task(TextTaskConfig(data_files=str(corpus), tokenizer=str(file), block_size=32))
    assert task.dataset("test")["input_ids"][0][0] == endoftext


def test_sentencepiece_and_hf_decode_refuse_out_of_range_ids_and_take_tensors(corpus, tmp_path):
    sp_model = tmp_path / "tok.model"
    assert train_tokenizer.main(["--data-files", str(corpus), "--vocab-size", "300", "--output", str(sp_model)]) == 0
    hf_dir = tmp_path / "hf"
    hf_dir.mkdir()
    _gpt2_like_tokenizer_json(corpus, hf_dir / "tokenizer.json")
    for tokenizer in (SentencePieceTokenizer.from_file(sp_model), HFTokenizer.from_file(hf_dir)):
        ids = tokenizer.encode("the for statement")
        assert tokenizer.decode(torch.tensor(ids)) == "the for statement"
        assert tokenizer.decode(torch.tensor(ids[0])) == tokenizer.decode(ids[:1])  # a 0-d tensor is one id
        for bad in (tokenizer.vocab_size, -1):
            last = tokenizer.vocab_size - 1
            with pytest.raises(ValueError, match=rf"token ids \[{bad}\] are out of range .*\(0\.\.{last}\)"):
                tokenizer.decode([*ids, bad])


def test_bad_sources_say_what_is_wrong(corpus, tmp_path):
    with pytest.raises(ValueError, match="either task.data_files"):
        TextSource()
    with pytest.raises(ValueError, match="either task.data_files"):
        TextSource(data_files=str(corpus), dataset="wikitext")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        raw_split(TextSource(data_files=str(tmp_path / "missing*.txt")), "train")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"body": p}) + "\n" for p in pydoc_paragraphs()[:50]))
    with pytest.raises(ValueError, match="no column 'text'.*body"):
        raw_split(TextSource(data_files=str(jsonl)), "train")
    assert len(raw_split(TextSource(data_files=str(jsonl), text_column="body"), "train")) == 50 - 2 * 2
    with pytest.raises(ValueError, match="unknown split"):
        raw_split(TextSource(data_files=str(corpus)), "dev")
    with pytest.raises(ValueError, match="is not a SentencePiece .model file, an HF tokenizer.json"):
        build_task(TextTaskConfig(data_files=str(corpus), tokenizer=str(corpus)))


def test_ctrl_c_while_the_corpus_is_read_is_an_interrupt_and_writes_no_model(tmp_path, monkeypatch, capsys):
    """SentencePiece's trainer turned it into "error: cannot train ...: INTERNAL: KeyboardInterrupt" with a
    Python stack, exit 2."""
    def corpus_then_ctrl_c(*args, **kwargs):
        yield from ["the quick brown fox jumps over the lazy dog"] * 200
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_sentencepiece(corpus_then_ctrl_c(), vocab_size=40)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox\n" * 50)
    monkeypatch.setattr(train_tokenizer, "iter_texts", corpus_then_ctrl_c)
    out = tmp_path / "tok.model"
    assert train_tokenizer.main(["--data-files", str(corpus), "--vocab-size", "40", "--output", str(out)]) == 130
    assert capsys.readouterr().err.splitlines()[-1] == "interrupted" and not out.exists()
