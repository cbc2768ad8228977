"""Hugging Face `tokenizers` models (a `tokenizer.json`, e.g. GPT-2's or BERT's) behind xlm's
tokenizer protocol, in two uses.

A tokenizer for a new model (`from_file`, the text task): each xlm role ([PAD], [MASK], ...) maps
to the tokenizer's token for it when it has one and to a token added after its vocabulary
otherwise (GPT-2 + [MASK] gives MDLM's 50258 ids); xlm's collators place the special tokens.

A model's own tokenizer (`of_model`, what an HF model dir brings): used as transformers uses it,
since the model's embedding has rows for its tokens and no others. Its roles are the special
tokens it declares (tokenizer_config.json, special_tokens_map.json) or has; nothing is added, and
a role it lacks is an error when asked for, except [PAD], which is then [EOS]: GPT-2 has no pad
token, and transformers' generate pads with eos (masked out) too. Text is encoded with the
tokenizer's own special tokens (BERT's [CLS] ... [SEP], Llama's <s>), as a transformers
tokenizer call does.

The whole tokenizer travels in `spec()`, so a run dir needs no file beside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken
from tokenizers import Tokenizer as HFTokenizerModel

from xlm.errors import InvalidValueError, PathNotFoundError
from xlm.io import read_json_object

from .tokenizers import MissingSpecialTokenError, checked_ids

#: For each xlm role, the tokens that fill it in common HF tokenizers, first match wins;
#: a role with no match gets its xlm name added as a new special token (for a new model).
ROLE_CANDIDATES: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<pad>"),
    "cls": ("[CLS]", "<s>"),
    "mask": ("[MASK]", "<mask>"),
    "eos": ("[EOS]", "</s>", "<|endoftext|>"),
    "bos": ("[BOS]", "<s>", "<|endoftext|>"),
    "sep": ("[SEP]", "</s>"),
    "unk": ("[UNK]", "<unk>"),
}

#: Where transformers writes a tokenizer's special tokens beside its tokenizer.json (later files win).
DECLARING_FILES = ("special_tokens_map.json", "tokenizer_config.json")


class HFTokenizer:
    def __init__(self, tokenizer_json: str, roles: Mapping[str, str] | None = None, *, as_is: bool = False) -> None:
        """`roles` maps xlm roles to tokens, over those ROLE_CANDIDATES finds. A new model's tokenizer
        fills every role, adding the tokens its vocabulary lacks; `as_is` (a model's own) keeps only the
        roles whose token it has, and encodes text with its own special tokens."""
        self._tok = HFTokenizerModel.from_str(tokenizer_json)
        self._tok.no_padding()
        self._tok.no_truncation()
        vocab = self._tok.get_vocab(with_added_tokens=True)
        found = {role: token for role, candidates in ROLE_CANDIDATES.items()
                 if (token := next((c for c in candidates if c in vocab), None)) is not None}
        roles = {**found, **(roles or {})}
        if as_is:
            roles = {role: token for role, token in roles.items() if token in vocab}
        else:
            roles = {role: roles.get(role, f"[{role.upper()}]") for role in ROLE_CANDIDATES}
            missing = [token for token in dict.fromkeys(roles.values()) if token not in vocab]
            if missing:
                self._tok.add_special_tokens([AddedToken(token, special=True) for token in missing])
        self._as_is = as_is
        self._roles = roles
        self._ids = {role: self._tok.token_to_id(token) for role, token in roles.items()}
        # as transformers decodes: every token the tokenizer marks special is left out too
        marked = {i for i, token in self._tok.get_added_tokens_decoder().items() if token.special} if as_is else set()
        self._special_ids = frozenset(self._ids.values()) | frozenset(marked)

    @classmethod
    def from_file(cls, path: str | Path) -> HFTokenizer:
        """The tokenizer for a new model: `path` is a tokenizer.json or a directory holding one."""
        return cls(_tokenizer_file(path).read_text(encoding="utf-8"))

    @classmethod
    def of_model(cls, path: str | Path) -> HFTokenizer:
        """The tokenizer an HF model came with, used as it is: `path` is the model's dir (its
        tokenizer.json, and the special tokens it declares beside it) or a tokenizer.json."""
        file = _tokenizer_file(path)
        return cls(file.read_text(encoding="utf-8"), declared_roles(file.parent), as_is=True)

    vocab_size = property(lambda self: self._tok.get_vocab_size(with_added_tokens=True))
    cls_token_id = property(lambda self: self._role_id("cls"))
    mask_token_id = property(lambda self: self._role_id("mask"))
    eos_token_id = property(lambda self: self._role_id("eos"))
    bos_token_id = property(lambda self: self._role_id("bos"))
    sep_token_id = property(lambda self: self._role_id("sep"))
    unk_token_id = property(lambda self: self._role_id("unk"))
    special_ids = property(lambda self: self._special_ids)

    @property
    def pad_token_id(self) -> int:
        """[PAD], or [EOS] for a tokenizer without one: padding is masked out wherever it is used."""
        return self._role_id("pad" if "pad" in self._ids else "eos")

    def _role_id(self, role: str) -> int:
        if role not in self._ids:
            has = ", ".join(f"{r}={t!r}" for r, t in self._roles.items()) or "none"
            raise MissingSpecialTokenError(
                f"this model's tokenizer has no {role} token (its special tokens: {has}); xlm adds none to a "
                f"model's own tokenizer, whose embedding has no row for it: use a model whose tokenizer has one")
        return self._ids[role]

    def encode(self, text: str) -> list[int]:
        """A new model's tokenizer: plain text, without its post-processing ([CLS]/[SEP] wrapping), as
        xlm's collators place the special tokens each family needs. A model's own: as transformers
        encodes it, with its special tokens."""
        return self._tok.encode(text, add_special_tokens=self._as_is).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=self._as_is)]

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        ids = checked_ids(ids, self.vocab_size)
        if skip_special_tokens:
            ids = [i for i in ids if i not in self._special_ids]
        return self._tok.decode(ids, skip_special_tokens=False)

    def spec(self) -> dict[str, Any]:
        """`as_is` only where it is set: a new model's spec stays what it was (text-task caches are keyed by it)."""
        spec = {"kind": "hf", "tokenizer_json": self._tok.to_str(), "roles": self._roles}
        return {**spec, "as_is": True} if self._as_is else spec


def _tokenizer_file(path: str | Path) -> Path:
    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise PathNotFoundError(f"no tokenizer.json at {path}; give an HF tokenizer file or a model dir with one")
    return file


def declared_roles(directory: Path) -> dict[str, str]:
    """The special tokens a transformers tokenizer saved in `directory` declares, by xlm role
    (`bos_token`: "<s>" or {"content": "<s>", ...})."""
    roles: dict[str, str] = {}
    for name in DECLARING_FILES:
        file = directory / name
        if not file.is_file():
            continue
        declared = read_json_object(file, InvalidValueError)
        for role in ROLE_CANDIDATES:
            value = declared.get(f"{role}_token")
            token = value.get("content") if isinstance(value, Mapping) else value
            if isinstance(token, str):
                roles[role] = token
    return roles


def hf_tokenizer_from_spec(spec: Mapping[str, Any]) -> HFTokenizer:
    return HFTokenizer(spec["tokenizer_json"], spec["roles"], as_is=spec.get("as_is", False))
