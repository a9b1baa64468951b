"""How fast are the numpy n-gram models? Fit and score on 1M tokens.

    python benchmarks/bench_ngram.py [--tokens 1000000] [--repeats 3]

Corpus: Python's documentation + standard-library source, character-level (real text), and the
synthetic Zipf unigram language (vocabulary 256, i.i.d. tokens: the most distinct n-grams, the
worst case for the tables). Prints the median wall time of ``repeats`` runs for fitting on
``tokens`` tokens and scoring (perplexity of) another ``tokens`` tokens, and the number of
stored counts. numpy runs these operations on one thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from minilm.data import CharTokenizer, ZipfUnigram, pydoc_text, stdlib_code
    from minilm.models.ngram import NGramModel

    n = args.tokens
    text = pydoc_text() + stdlib_code(max_bytes=10**7)
    tok = CharTokenizer.fit(text)
    chars = np.asarray(tok.encode(text), dtype=np.int64)
    if len(chars) < 2 * n:
        chars = np.tile(chars, 2 * n // len(chars) + 1)  # only if asked for more than the corpus has
    corpora = {
        f"text (chars, V={tok.vocab_size})": (chars[:n], chars[n : 2 * n], tok.vocab_size),
        "zipf (iid, V=256)": (ZipfUnigram().sample(n, 0), ZipfUnigram().sample(n, 1), 256),
    }
    print(f"n-gram benchmark: fit on {n:,} tokens, score {n:,} others; median of {args.repeats}; "
          f"numpy single-threaded (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
          f"{os.cpu_count()} CPUs")
    print(f"{'corpus':28s} {'order':>5s} {'smoothing':>9s} {'fit s':>7s} {'score s':>8s} {'counts':>10s} {'ppl':>8s}")
    for name, (train, test, V) in corpora.items():
        for order, smoothing in ((2, "kn"), (3, "kn"), (3, "mkn"), (3, "addk"), (4, "kn")):
            model = NGramModel(order, V, smoothing, pad=False)
            t_fit, _ = _timed(lambda m=model, x=train: m.fit(x), args.repeats)
            t_score, ppl = _timed(lambda m=model, x=test: m.perplexity(x), args.repeats)
            print(f"{name:28s} {order:5d} {smoothing:>9s} {t_fit:7.2f} {t_score:8.2f} "
                  f"{model.num_counts:10,d} {ppl:8.2f}")


if __name__ == "__main__":
    main()
