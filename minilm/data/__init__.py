"""Data for minilm: synthetic languages with exact entropy, Python's own text, tokenizers, batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from minilm.data.batching import get_batch, iterate_windows
from minilm.data.corpora import CorpusUnavailableError, pydoc_text, stdlib_code, train_val_split
from minilm.data.languages import (
    LANGUAGES,
    BigramBackcopy,
    MarkovLanguage,
    ZipfMarkovMixture,
    ZipfUnigram,
    zipf_probs,
)
from minilm.data.tokenizers import ByteTokenizer, CharTokenizer, encode_to_array


@dataclass
class Dataset:
    """Token arrays for training and validation, plus what is needed to read them back."""

    name: str
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    tokenizer: Any = None  # has .decode for text corpora; None for synthetic languages
    entropy_rate: float | None = None  # exact, for synthetic languages; unknown for real text
    language: Any = None  # the synthetic language object, when there is one

    def decode(self, ids) -> str:
        if self.tokenizer is None:
            return " ".join(str(int(i)) for i in ids)
        return self.tokenizer.decode(ids)


DATASETS = ("pydoc", "code", "zipf", "markov", "mixture")


def load_dataset(
    name: str = "pydoc",
    tokenizer: str = "char",
    n_tokens: int = 1_000_000,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> Dataset:
    """Load a corpus by name: "pydoc" or "code" (real text) or "zipf", "markov", "mixture".

    Text corpora are tokenized with ``tokenizer`` ("char" or "byte") and split deterministically;
    synthetic languages draw ``n_tokens`` training tokens with ``seed`` and a separate validation
    sample with seed + 1, and carry their exact entropy rate.
    """
    if name in ("pydoc", "code"):
        text = pydoc_text() if name == "pydoc" else stdlib_code()
        if tokenizer == "char":
            tok = CharTokenizer.fit(text)
        elif tokenizer == "byte":
            tok = ByteTokenizer()
        elif tokenizer == "bpe":
            from minilm.data.bpe import BPETokenizer  # optional: trained on the corpus itself

            tok = BPETokenizer.train(text[: int(len(text) * (1 - val_fraction))], vocab_size=512)
        else:
            raise ValueError(f"unknown tokenizer {tokenizer!r}: choose 'char', 'byte' or 'bpe'")
        train_text, val_text = train_val_split(text, val_fraction)
        return Dataset(name, encode_to_array(tok, train_text), encode_to_array(tok, val_text), tok.vocab_size, tok)
    if name in LANGUAGES:
        lang = LANGUAGES[name]()
        n_val = max(int(n_tokens * val_fraction), 2048)
        return Dataset(
            name, lang.sample(n_tokens, seed), lang.sample(n_val, seed + 1), lang.vocab_size,
            entropy_rate=lang.entropy_rate(), language=lang,
        )
    raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")


__all__ = [
    "BigramBackcopy", "ByteTokenizer", "CharTokenizer", "CorpusUnavailableError", "DATASETS", "Dataset", "LANGUAGES",
    "MarkovLanguage", "ZipfMarkovMixture", "ZipfUnigram", "encode_to_array", "get_batch",
    "iterate_windows", "load_dataset", "pydoc_text", "stdlib_code", "train_val_split", "zipf_probs",
]
