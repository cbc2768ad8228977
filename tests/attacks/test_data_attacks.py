"""Attacks through the data a run reads (issue #28, the data parts of failure 7): a corpus that is not
UTF-8, a JSON corpus with numbers where the text goes, a cached star split whose content was changed
while its shape was kept. Each is tried through the train command as a user runs it."""

import json
from pathlib import Path

import datasets
import pytest

from xlm.data.tasks.star import StarCacheWarning, load_star, star_cache_path
from xlm.data.tasks.text import first_bad_utf8
from xlm.recipes import train

DEBUG = ["--arch", "arlm_tiny", "--task", "text", "--experiment", "debug", "trainer.max_steps=1",
         "trainer.progress_bar=false", "trainer.tensorboard=false"]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XLM_CACHE_DIR", str(tmp_path / "cache"))


def _train(tmp_path: Path, corpus: Path, *extra: str, capsys) -> tuple[int, str]:
    code = train.main([*DEBUG, f"task.data_files={corpus}", "--output-dir", str(tmp_path / "run"), *extra])
    return code, capsys.readouterr().err


def _lines(n: int) -> list[str]:
    return [f"the cat sat on the mat for the {i} time" for i in range(n)]


@pytest.mark.parametrize("streaming", ["false", "true"])
def test_a_corpus_that_is_not_utf8_is_named_with_its_file_and_line(tmp_path, capsys, streaming):
    corpus = tmp_path / "latin1.txt"
    corpus.write_bytes("\n".join(_lines(300)).encode().replace(b"for the 57 ", b"for the \xff57 "))
    code, err = _train(tmp_path, corpus, f"task.streaming={streaming}", capsys=capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"error: {corpus}, line 58: not UTF-8 (byte 0xff); corpus files must be "
                                        f"UTF-8 text (convert it, e.g. with iconv -t utf-8)"]
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_line_is_counted_across_read_chunks_and_a_character_split_between_them_is_no_error(tmp_path):
    corpus = tmp_path / "big.txt"
    head = b"a" * ((1 << 20) - 1) + "é".encode()  # é's two bytes straddle the first 1 MiB read
    corpus.write_bytes(head + b"\n" + b"line two\n" * 1000 + b"bad \xc3\x28 here\n")
    error = first_bad_utf8([str(corpus)])
    assert error is not None and str(error).startswith(f"{corpus}, line 1002: not UTF-8 (byte 0xc3)")
    corpus.write_bytes(head + b"\n")
    assert first_bad_utf8([str(corpus)]) is None


@pytest.mark.parametrize("streaming", ["false", "true"])
def test_a_number_where_the_text_goes_names_the_row_and_column(tmp_path, capsys, streaming):
    rows = [{"text": line} for line in _lines(300)]
    rows[42]["text"] = 5
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, err = _train(tmp_path, corpus, f"task.streaming={streaming}", capsys=capsys)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert str(corpus) in line and "row 43, column 'text': int 5 where a document's text goes" in line


def test_a_column_of_numbers_only_is_named_too(tmp_path, capsys):
    corpus = tmp_path / "ids.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": i}) for i in range(300)) + "\n")
    code, err = _train(tmp_path, corpus, capsys=capsys)
    assert code == 2 and "row 1, column 'text': int 0" in err


def test_a_star_cache_changed_with_its_shape_kept_is_rebuilt_not_used(tmp_path):
    cache = tmp_path / "star"
    original = load_star("star_easy", "validation", cache_dir=cache).to_dict()
    path = star_cache_path("star_easy", "validation", cache_dir=cache)
    tampered = dict(original)
    tampered["goal"] = [(g + 1) % 20 for g in original["goal"]]  # every answer now leads somewhere else
    staged = tmp_path / "staged"
    datasets.Dataset.from_dict(tampered, features=load_star("star_easy", "validation", cache_dir=cache).features
                               ).save_to_disk(str(staged))
    for file in staged.iterdir():  # the data files replaced, the record of their hashes kept
        file.replace(path / file.name)
    with pytest.warns(StarCacheWarning, match="content differs from what was built"):
        assert load_star("star_easy", "validation", cache_dir=cache).to_dict() == original
    assert load_star("star_easy", "validation", cache_dir=cache).to_dict() == original


@pytest.mark.parametrize("streaming", ["false", "true"])
def test_a_corpus_of_blank_lines_says_it_has_no_text(tmp_path, capsys, streaming):
    corpus = tmp_path / "blank.txt"
    corpus.write_text("   \n\n \t \n" * 10)
    code, err = _train(tmp_path, corpus, f"task.streaming={streaming}", capsys=capsys)
    assert code == 2
    assert err.strip().splitlines() == [f"error: the training split of {corpus} has no text (every document is empty "
                                        f"or whitespace): there is nothing to train a tokenizer on"]
