"""Hugging Face `tokenizers` models (a `tokenizer.json`, e.g. GPT-2's or BERT's) behind xlm's
tokenizer protocol.

The model keeps its own ids; each xlm role ([PAD], [MASK], ...) maps to the model's token for it
when it has one (BERT's [MASK], GPT-2's <|endoftext|> as [EOS] and [BOS]) and to a token added
after its vocabulary otherwise (GPT-2 + [MASK] gives MDLM's 50258 ids). The whole tokenizer
travels in `spec()`, so a run dir needs no file beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizerModel

from xlm.errors import PathNotFoundError

#: For each xlm role, the tokens that fill it in common HF tokenizers, first match wins;
#: a role with no match gets its xlm name added as a new special token.
ROLE_CANDIDATES: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<pad>"),
    "cls": ("[CLS]", "<s>"),
    "mask": ("[MASK]", "<mask>"),
    "eos": ("[EOS]", "</s>", "<|endoftext|>"),
    "bos": ("[BOS]", "<s>", "<|endoftext|>"),
    "sep": ("[SEP]", "</s>"),
    "unk": ("[UNK]", "<unk>"),
}


class HFTokenizer:
    def __init__(self, tokenizer_json: str, roles: Mapping[str, str] | None = None) -> None:
        self._tok = HFTokenizerModel.from_str(tokenizer_json)
        self._tok.no_padding()
        self._tok.no_truncation()
        vocab = self._tok.get_vocab(with_added_tokens=True)
        if roles is None:
            roles = {role: next((c for c in candidates if c in vocab), f"[{role.upper()}]")
                     for role, candidates in ROLE_CANDIDATES.items()}
        missing = [token for token in dict.fromkeys(roles.values()) if token not in vocab]
        if missing:
            self._tok.add_special_tokens([AddedToken(token, special=True) for token in missing])
        self._roles = dict(roles)
        self._ids = {role: self._tok.token_to_id(token) for role, token in roles.items()}
        self._special_ids = frozenset(self._ids.values())

    @classmethod
    def from_file(cls, path: str | Path) -> HFTokenizer:
        """`path` is a tokenizer.json or a directory holding one (an HF model dir)."""
        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise PathNotFoundError(f"no tokenizer.json at {path}; give an HF tokenizer file or a model dir with one")
        return cls(file.read_text(encoding="utf-8"))

    vocab_size = property(lambda self: self._tok.get_vocab_size(with_added_tokens=True))
    pad_token_id = property(lambda self: self._ids["pad"])
    cls_token_id = property(lambda self: self._ids["cls"])
    mask_token_id = property(lambda self: self._ids["mask"])
    eos_token_id = property(lambda self: self._ids["eos"])
    bos_token_id = property(lambda self: self._ids["bos"])
    sep_token_id = property(lambda self: self._ids["sep"])
    unk_token_id = property(lambda self: self._ids["unk"])
    special_ids = property(lambda self: self._special_ids)

    def encode(self, text: str) -> list[int]:
        """Plain text, without the model's own post-processing ([CLS]/[SEP] wrapping): xlm's
        collators place the special tokens each family needs."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are out of range for this tokenizer (0..{self.vocab_size - 1})")
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self._tok.decode(ids, skip_special_tokens=False)

    def spec(self) -> dict[str, Any]:
        return {"kind": "hf", "tokenizer_json": self._tok.to_str(), "roles": self._roles}


def hf_tokenizer_from_spec(spec: Mapping[str, Any]) -> HFTokenizer:
    return HFTokenizer(spec["tokenizer_json"], spec["roles"])
