"""How fast is byte-level BPE training? 1 MB of text, several vocabulary sizes, both tie rules.

    python benchmarks/bench_bpe.py [--mb 1.0] [--vocab 512 2048 8192] [--repeats 3] [--baseline OLD.py]

Text: Python's documentation followed by standard-library source (real English and code),
cut to ``--mb`` megabytes of UTF-8. Prints the median of ``repeats`` runs for training
(pre-tokenization + incremental merges) with each tie-break rule ("lexicographic", the default,
and "ids"), timed interleaved in the same rounds, the ratio of the two, the time to encode the
same text, and the compression (bytes per token).

``--baseline`` names a file holding another version of ``minilm/data/bpe.py`` (for example
``git show HEAD:minilm/data/bpe.py > /tmp/bpe_old.py``); its default training is timed in the
same rounds and the ratio new / baseline printed. Pure Python: one thread (torch is not used).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from _baseline import load_module  # benchmarks/_baseline.py (the script's own folder is on sys.path)


def _seconds(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1.0)
    parser.add_argument("--vocab", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--baseline", default=None, help="a file with another version of minilm/data/bpe.py")
    args = parser.parse_args()

    from minilm.data import pydoc_text, stdlib_code
    from minilm.data.bpe import BPETokenizer

    baseline = load_module(args.baseline, "bpe_baseline").BPETokenizer if args.baseline else None
    n_bytes = int(args.mb * 1e6)
    raw = (pydoc_text() + stdlib_code(max_bytes=10**7)).encode("utf-8")[:n_bytes]
    text = raw.decode("utf-8", errors="ignore")
    specials = ["<|endoftext|>"]
    trainers = {
        "lexicographic": lambda v: BPETokenizer.train(text, vocab_size=v, special_tokens=specials),
        "ids": lambda v: BPETokenizer.train(text, vocab_size=v, special_tokens=specials, tie_break="ids"),
    }
    if baseline is not None:
        trainers["baseline"] = lambda v: baseline.train(text, vocab_size=v, special_tokens=specials)
    print(f"BPE benchmark: {len(text.encode('utf-8')):,} bytes of text, median of {args.repeats} interleaved "
          f"rounds, pure Python (one thread of {os.cpu_count()} CPUs; torch not used)"
          + (f"; baseline {args.baseline}" if baseline else ""))
    header = f"{'vocab':>6s} {'lex s':>7s} {'ids s':>7s} {'lex/ids':>8s}"
    header += f" {'base s':>7s} {'lex/base':>9s}" if baseline else ""
    print(header + f" {'encode s':>9s} {'bytes/token':>12s}")
    for vocab in args.vocab:
        times: dict[str, list[float]] = {name: [] for name in trainers}
        enc_times = []
        names = list(trainers)
        for r in range(args.repeats):  # interleaved: every trainer in every round, each first in turn
            for name in names[r % len(names) :] + names[: r % len(names)]:
                seconds, tok = _seconds(lambda t=trainers[name], v=vocab: t(v))
                times[name].append(seconds)
                if name == "lexicographic":
                    fresh = BPETokenizer(tok.merges, specials)  # an empty encode cache
                    seconds, ids = _seconds(lambda f=fresh: f.encode(text))
                    enc_times.append(seconds)
        assert fresh.decode(ids) == text
        med = {name: statistics.median(t) for name, t in times.items()}
        line = f"{fresh.vocab_size:6d} {med['lexicographic']:7.2f} {med['ids']:7.2f} " \
               f"{med['lexicographic'] / med['ids']:8.2f}"
        if baseline is not None:
            line += f" {med['baseline']:7.2f} {med['lexicographic'] / med['baseline']:9.2f}"
        print(line + f" {statistics.median(enc_times):9.2f} {len(text.encode('utf-8')) / len(ids):12.2f}")


if __name__ == "__main__":
    main()
