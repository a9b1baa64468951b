"""How fast are the numpy n-gram models? Fit and score on 1M tokens.

    python benchmarks/bench_ngram.py [--tokens 1000000] [--repeats 3] [--baseline OLD.py]

Corpus: Python's documentation + standard-library source, character-level (real text), and the
synthetic Zipf unigram language (vocabulary 256, i.i.d. tokens: the most distinct n-grams, the
worst case for the tables). Prints the median wall time of ``repeats`` runs for fitting on
``tokens`` tokens and scoring (perplexity of) another ``tokens`` tokens, and the number of
stored counts. numpy runs these operations on one thread (torch is not used).

``--baseline`` names a file holding another version of ``minilm/models/ngram.py`` (for example
``git show HEAD:minilm/models/ngram.py > /tmp/ngram_old.py``); it is fitted and scored on the
same data in the same rounds (interleaved), and the ratios new / baseline are printed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings

import numpy as np
from _baseline import load_module  # benchmarks/_baseline.py (the script's own folder is on sys.path)


def _timed_interleaved(models: dict, train, test, repeats: int) -> dict[str, tuple[float, float, float]]:
    """{name: (median fit seconds, median score seconds, perplexity)}, every model in every round."""
    times = {name: ([], []) for name in models}
    ppl = {}
    names = list(models)
    for r in range(repeats):  # interleaved: every model in every round, each first in turn
        for name in names[r % len(names) :] + names[: r % len(names)]:
            model = models[name]
            t0 = time.perf_counter()
            with warnings.catch_warnings():  # the discount fallback: reported in the table instead
                warnings.simplefilter("ignore")
                model.fit(train)
            t1 = time.perf_counter()
            ppl[name] = model.perplexity(test)
            times[name][0].append(t1 - t0)
            times[name][1].append(time.perf_counter() - t1)
    return {name: (statistics.median(f), statistics.median(s), ppl[name]) for name, (f, s) in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="a file with another version of minilm/models/ngram.py")
    args = parser.parse_args()

    from minilm.data import CharTokenizer, ZipfUnigram, pydoc_text, stdlib_code
    from minilm.models.ngram import KENLM_FALLBACK_DISCOUNTS, NGramModel

    baseline = load_module(args.baseline, "ngram_baseline").NGramModel if args.baseline else None
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
    print(f"n-gram benchmark: fit on {n:,} tokens, score {n:,} others; median of {args.repeats} interleaved "
          f"rounds; numpy single-threaded (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
          f"{os.cpu_count()} CPUs" + (f"; baseline {args.baseline}" if baseline else ""))
    header = f"{'corpus':28s} {'order':>5s} {'smoothing':>9s} {'fit s':>7s} {'score s':>8s}"
    header += f" {'base fit':>8s} {'base score':>10s} {'fit x':>6s} {'score x':>7s}" if baseline else ""
    print(header + f" {'counts':>10s} {'ppl':>9s}  notes")
    for name, (train, test, V) in corpora.items():
        for order, smoothing in ((2, "kn"), (3, "kn"), (3, "mkn"), (3, "addk"), (4, "kn")):
            models = {"new": NGramModel(order, V, smoothing, pad=False)}
            if baseline is not None:
                models["baseline"] = baseline(order, V, smoothing, pad=False)
            res = _timed_interleaved(models, train, test, args.repeats)
            (t_fit, t_score, ppl) = res["new"]
            line = f"{name:28s} {order:5d} {smoothing:>9s} {t_fit:7.2f} {t_score:8.2f}"
            notes = []
            if baseline is not None:
                b_fit, b_score, b_ppl = res["baseline"]
                line += f" {b_fit:8.2f} {b_score:10.2f} {t_fit / b_fit:6.2f} {t_score / b_score:7.2f}"
                if abs(ppl - b_ppl) > 1e-9 * ppl:
                    notes.append(f"baseline ppl {b_ppl:.4f}")
            fallback = [m for m, d in enumerate(models["new"].discounts, start=1)
                        if smoothing == "mkn" and d == KENLM_FALLBACK_DISCOUNTS]
            if fallback:
                notes.append(f"KenLM fallback discounts at order(s) {fallback}")
            print(line + f" {models['new'].num_counts:10,d} {ppl:9.4f}  " + "; ".join(notes))


if __name__ == "__main__":
    main()
