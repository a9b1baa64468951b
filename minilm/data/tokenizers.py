"""Character-level and byte-level tokenizers (BPE lives in ``minilm.data.bpe``).

Every tokenizer has ``vocab_size``, ``encode(str) -> list[int]``, ``decode(list[int]) -> str``,
and ``save(path)`` / ``load(path)`` as JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from minilm.atomic import atomic_write_text


class CharTokenizer:
    """One token per character seen in the training text (sorted, so ids are deterministic).

    ``unknown="error"`` raises on a character not in the vocabulary; ``unknown="replace"`` maps it
    to a reserved unknown token (id 0, decoded as U+FFFD).
    """

    UNK = "\ufffd"

    def __init__(self, chars: list[str], unknown: str = "error"):
        if unknown not in ("error", "replace"):
            raise ValueError(f"unknown must be 'error' or 'replace', got {unknown!r}")
        self.unknown = unknown
        chars = sorted(set(chars) - {self.UNK})
        self.itos = ([self.UNK] if unknown == "replace" else []) + chars
        self.stoi = {c: i for i, c in enumerate(self.itos)}

    @classmethod
    def fit(cls, text: str, unknown: str = "error") -> CharTokenizer:
        if not text:
            raise ValueError("cannot build a character vocabulary from empty text")
        return cls(list(set(text)), unknown)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        if self.unknown == "replace":
            return [self.stoi.get(c, 0) for c in text]
        try:
            return [self.stoi[c] for c in text]
        except KeyError as err:
            raise ValueError(
                f"character {err.args[0]!r} is not in the vocabulary: fit the tokenizer on text that "
                "contains it, or build it with unknown='replace'"
            ) from None

    def decode(self, ids) -> str:
        try:
            return "".join(self.itos[int(i)] for i in ids)
        except IndexError:
            raise ValueError(f"token id out of range for a vocabulary of {self.vocab_size}") from None

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps({"type": "char", "unknown": self.unknown, "itos": self.itos}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("type") != "char":
            raise ValueError(f"{path} is not a character tokenizer file (type={data.get('type')!r})")
        tok = cls([], data["unknown"])
        tok.itos = data["itos"]
        tok.stoi = {c: i for i, c in enumerate(tok.itos)}
        return tok


class ByteTokenizer:
    """UTF-8 bytes as tokens: vocabulary of 256, never an unknown token."""

    vocab_size = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        # errors="replace": a sampled byte sequence need not be valid UTF-8
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps({"type": "byte"}))

    @classmethod
    def load(cls, path: str | os.PathLike) -> ByteTokenizer:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        if data.get("type") != "byte":
            raise ValueError(f"{path} is not a byte tokenizer file (type={data.get('type')!r})")
        return cls()


def encode_to_array(tokenizer, text: str) -> np.ndarray:
    """Encode text to a compact numpy array (uint16 when the vocabulary fits, else int32)."""
    dtype = np.uint16 if tokenizer.vocab_size <= 65536 else np.int32
    return np.asarray(tokenizer.encode(text), dtype=dtype)
