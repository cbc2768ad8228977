"""python -m xlm.recipes.train_tokenizer (--data-files F[,F...] | --dataset NAME) --vocab-size N
--output tok.model

Trains a SentencePiece model with xlm's special ids ([PAD]=0 ... [UNK]=6) on the training split
of a text source, for `--task text task.tokenizer=tok.model`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from collections.abc import Sequence

from xlm.data.sentencepiece_tokenizer import SentencePieceTokenizer, train_sentencepiece
from xlm.data.tasks.text import TextSource, iter_texts, raw_split
from xlm.errors import InvalidValueError, reports_user_errors


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="xlm train-tokenizer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--data-files", help="comma-separated files or globs (.txt: one document per line)")
    src.add_argument("--dataset", help="an HF dataset name or a local dataset dir")
    p.add_argument("--dataset-config", default=None)
    p.add_argument("--text-column", default="text")
    p.add_argument("--vocab-size", type=int, required=True)
    p.add_argument("--model-type", default="unigram", choices=("unigram", "bpe", "char", "word"))
    p.add_argument("--character-coverage", type=float, default=1.0,
                   help="the share of the corpus's characters the vocabulary covers; the rest become [UNK] "
                        "(SentencePiece suggests 0.9995 for corpora with many rare characters)")
    p.add_argument("--max-documents", type=int, default=1_000_000, help="train on at most this many documents")
    p.add_argument("--output", required=True, help="the .model file to write")
    return p.parse_args(argv)


@reports_user_errors
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.max_documents < 1:
        raise InvalidValueError(f"--max-documents must be >= 1, got {args.max_documents}")
    output = Path(args.output)
    if output.suffix != ".model":
        raise InvalidValueError(f"--output should end in .model (the task reads the kind from it), got {output}")
    source = TextSource(data_files=args.data_files, dataset=args.dataset, dataset_config=args.dataset_config,
                        text_column=args.text_column)
    train = raw_split(source, "train")
    proto = train_sentencepiece(iter_texts(train, args.text_column, args.max_documents),
                                vocab_size=args.vocab_size, model_type=args.model_type,
                                character_coverage=args.character_coverage, vocab_setting="--vocab-size",
                                coverage_setting="--character-coverage")
    output.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = SentencePieceTokenizer(proto)
    tokenizer.save(output)
    print(f"wrote {output} ({tokenizer.vocab_size} pieces, trained on {min(len(train), args.max_documents)} "
          f"documents)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
