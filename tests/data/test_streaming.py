"""Streaming text (task.streaming=true): rows packed on the fly with [BOS]/[EOS], shards split
between ranks and dataloader workers (disjoint, covering), held-out splits by hash or the source's
own, and a position that resumes the stream exactly. No network: shards are written here."""

import json

import pytest
import torch

from xlm.data.corpora import pydoc_paragraphs
from xlm.data.framing import DocumentFrame
from xlm.data.streaming import PackedRows, RowStream, shard_assignment
from xlm.data.tasks import build_task
from xlm.data.tasks.text import (StreamedSplit, TextSource, TextTaskConfig, blocks_from_documents, held_out_bucket,
                                 stream_texts)

BOS, EOS = 4, 3
FRAME = DocumentFrame(start=BOS, end=EOS)


def _write_shards(directory, count, paragraphs, suffix=".txt"):
    directory.mkdir(parents=True, exist_ok=True)
    per = len(paragraphs) // count
    for i in range(count):
        part = paragraphs[i * per : (i + 1) * per]
        if suffix == ".txt":
            (directory / f"shard-{i:02d}.txt").write_text("\n".join(part[:3] + ["", "   "] + part[3:]) + "\n")
        else:
            (directory / f"shard-{i:02d}.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in part))
    return str(directory / f"shard-*{suffix}")


@pytest.fixture(scope="module")
def paragraphs():
    return pydoc_paragraphs()[:600]


@pytest.fixture(scope="module")
def five_shards(tmp_path_factory, paragraphs):
    return _write_shards(tmp_path_factory.mktemp("five"), 5, paragraphs)


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory, paragraphs):
    return _write_shards(tmp_path_factory.mktemp("four"), 4, paragraphs, suffix=".jsonl")


def _char_ids(text):  # a tokenizer stand-in that keeps the document recognisable
    return [7 + ord(c) % 90 for c in text]


def _train_docs_in_shard(source, shard):
    return [t for t in StreamedSplit(source, "train").documents(shard, 0) if t is not None]


def test_rows_are_documents_with_bos_eos_packed_in_shard_order(five_shards):
    source = TextSource(data_files=five_shards)
    rows = PackedRows(StreamedSplit(source, "train"), consumer=0, num_consumers=1, seed=3, encode=_char_ids,
                      frame=FRAME, block_size=64, packing=True)
    got = [row for row, _ in zip((r for r, _ in rows.rows()), range(400))]
    order, split_docs = shard_assignment(5, 0, 1, seed=3, epoch=0)
    assert sorted(order) == list(range(5)) and order != list(range(5)) and not split_docs
    docs = [d for shard in order for d in _train_docs_in_shard(source, shard)]
    expected = blocks_from_documents([_char_ids(d) for d in docs], frame=FRAME, block_size=64,
                                     packing=True)
    assert got == expected[:400]  # blocks_from_documents on the whole pass, cut on the fly
    # without packing: one document per row, truncated with its [EOS] kept
    single = PackedRows(StreamedSplit(source, "train"), consumer=0, num_consumers=1, seed=3, encode=_char_ids,
                        frame=FRAME, block_size=64, packing=False)
    first = [r for r, _ in zip((r for r, _ in single.rows()), range(20))]
    assert first == [[BOS, *_char_ids(d)[:62], EOS] for d in docs[:20]]


def test_the_task_streams_blocks_of_its_tokenizer(five_shards):
    task = build_task(TextTaskConfig(data_files=five_shards, streaming=True, tokenizer_vocab_size=300,
                                 block_size=48, streaming_eval_documents=40))
    stream = task.train_stream(rank=0, world_size=1, num_workers=0, seed=0)
    rows = stream.next_rows(30)
    assert all(len(r) == 48 for r in rows) and rows[0][0] == task.tokenizer.bos_token_id
    flat = [t for r in rows for t in r]
    assert flat.count(task.tokenizer.eos_token_id) > 5 and task.tokenizer.pad_token_id not in flat
    first_shard = shard_assignment(5, 0, 1, seed=0, epoch=0)[0][0]
    first_doc = _train_docs_in_shard(task.source, first_shard)[0]
    assert task.tokenizer.decode(rows[0][1:12]) in first_doc
    val = task.dataset("validation")["input_ids"]
    assert val and all(len(r) == 48 for r in val)
    with pytest.raises(TypeError, match="training split is a stream"):
        task.dataset("train")


def _one_pass(source, consumer, num_consumers, ids):
    """The document ids consumer `consumer` reads in pass 0 (block_size 3: one document per row)."""
    rows = PackedRows(StreamedSplit(source, "train"), consumer=consumer, num_consumers=num_consumers, seed=1,
                      encode=lambda text: [ids[text]], frame=FRAME, block_size=3, packing=True)
    out = []
    for row, position in rows.rows():
        if position["epoch"] > 0:
            return out
        out.append(row[1])
    raise AssertionError("unreachable")


@pytest.mark.parametrize("shards", ["four_shards", "five_shards"])
def test_ranks_and_workers_read_disjoint_documents_that_cover_the_corpus(shards, request):
    """4 shards, 2 or 4 readers: whole shards each; 5 shards: every reader reads every shard and keeps
    every n-th document (the split_dataset_by_node rule). Either way: disjoint and covering."""
    source = TextSource(data_files=request.getfixturevalue(shards))
    docs = stream_texts(source, "train", 10**9)
    ids = {text: 1000 + i for i, text in enumerate(dict.fromkeys(docs))}
    everything = sorted(ids[t] for t in stream_texts(source, "train", 10**9))
    for readers in (2, 4):  # 2 ranks; 2 ranks x 2 dataloader workers
        seen = [_one_pass(source, c, readers, ids) for c in range(readers)]
        assert all(seen)
        for a in range(readers):
            for b in range(a + 1, readers):
                assert not set(seen[a]) & set(seen[b])
        assert sorted(i for s in seen for i in s) == everything


class _IdRows:
    """A picklable factory of one-document-per-row streams (for dataloader workers)."""

    def __init__(self, source, ids):
        self.source, self.ids = source, ids

    def __call__(self, consumer, num_consumers):
        return PackedRows(StreamedSplit(self.source, "train"), consumer=consumer, num_consumers=num_consumers,
                          seed=1, encode=lambda text: [self.ids[text]], frame=FRAME, block_size=3,
                          packing=True)


def test_dataloader_workers_are_readers_rank_times_w_plus_worker(four_shards):
    source = TextSource(data_files=four_shards)
    ids = {text: 1000 + i for i, text in enumerate(dict.fromkeys(stream_texts(source, "train", 10**9)))}
    factory = _IdRows(source, ids)
    stream = RowStream(factory, rank=1, world_size=2, num_workers=2)
    got = [r[1] for r in stream.next_rows(12)]
    stream.close()
    w0, w1 = (_one_pass(source, c, 4, ids) for c in (2, 3))  # rank 1's readers: 1*2+0 and 1*2+1
    assert got == [x for pair in zip(w0[:6], w1[:6]) for x in pair]  # the dataloader's round robin


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_saved_position_resumes_the_stream_exactly(five_shards, num_workers, tmp_path):
    task = build_task(TextTaskConfig(data_files=five_shards, streaming=True, tokenizer_vocab_size=300,
                                 block_size=40))
    straight = task.train_stream(rank=0, world_size=2, num_workers=num_workers, seed=0)
    rows = straight.next_rows(37)
    torch.save(straight.state(), tmp_path / "position.pt")
    rows += straight.next_rows(60)
    straight.close()
    state = torch.load(tmp_path / "position.pt", weights_only=True)  # plain values, as in a checkpoint
    assert 0 < len(state["positions"][0]["buffer"]) < 40 or state["positions"][0]["doc"] > 0
    resumed = task.train_stream(rank=0, world_size=2, num_workers=num_workers, seed=0)
    resumed.load_state(state)
    assert resumed.next_rows(60) == rows[37:]
    resumed.close()
    other = task.train_stream(rank=0, world_size=2, num_workers=num_workers + 1, seed=0)
    with pytest.raises(ValueError, match="data.num_workers"):
        other.load_state(state)


def test_train_size_makes_every_pass_the_same_rows(five_shards):
    task = build_task(TextTaskConfig(data_files=five_shards, streaming=True, tokenizer_vocab_size=300,
                                 block_size=40, train_size=10))
    stream = task.train_stream(rank=0, world_size=1, num_workers=0, seed=0)
    assert stream.next_rows(10) == stream.next_rows(10) == stream.next_rows(10)


def test_held_out_documents_never_reach_training(five_shards, paragraphs):
    source = TextSource(data_files=five_shards, held_out_fraction=0.1)
    splits = {s: list(stream_texts(source, s, 10**9)) for s in ("train", "validation", "test")}
    assert not set(splits["train"]) & (set(splits["validation"]) | set(splits["test"]))
    assert not set(splits["validation"]) & set(splits["test"])
    assert sorted(sum(splits.values(), [])) == sorted(paragraphs[:600])
    assert 0.05 < len(splits["validation"]) / 600 < 0.15 and 0.05 < len(splits["test"]) / 600 < 0.15
    assert all(held_out_bucket(t, seed=source.seed, fraction=0.1) == "validation" for t in splits["validation"])


def test_a_dataset_dir_with_its_own_splits_streams_them(tmp_path, paragraphs):
    root = tmp_path / "ds"
    root.mkdir()
    for name, part in (("train", paragraphs[:300]), ("validation", paragraphs[300:340]), ("test", paragraphs[340:380])):
        (root / f"{name}.jsonl").write_text("".join(json.dumps({"body": p}) + "\n" for p in part))
    source = TextSource(dataset=str(root), text_column="body")
    assert list(stream_texts(source, "validation", 10**9)) == paragraphs[300:340]
    assert sorted(stream_texts(source, "train", 10**9)) == sorted(paragraphs[:300])
    with pytest.raises(ValueError, match="no column 'text'"):
        list(stream_texts(TextSource(dataset=str(root)), "train", 5))
