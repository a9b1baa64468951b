"""How fast is byte-level BPE training? 1 MB of text, several vocabulary sizes.

    python benchmarks/bench_bpe.py [--mb 1.0] [--vocab 512 2048 8192] [--repeats 3]

Text: Python's documentation followed by standard-library source (real English and code),
cut to ``--mb`` megabytes of UTF-8. Prints the median of ``repeats`` runs for training
(pre-tokenization + incremental merges) and for encoding the same text, and the compression
(bytes per token). Pure Python: one thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=1.0)
    parser.add_argument("--vocab", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from minilm.data import pydoc_text, stdlib_code
    from minilm.data.bpe import HAS_REGEX, BPETokenizer

    n_bytes = int(args.mb * 1e6)
    raw = (pydoc_text() + stdlib_code(max_bytes=10**7)).encode("utf-8")[:n_bytes]
    text = raw.decode("utf-8", errors="ignore")
    print(f"BPE benchmark: {len(text.encode('utf-8')):,} bytes of text, median of {args.repeats}, "
          f"pure Python (one thread of {os.cpu_count()} CPUs), GPT-2 regex via "
          f"{'the regex module' if HAS_REGEX else 're (approximation)'}")
    print(f"{'vocab':>6s} {'train s':>8s} {'encode s':>9s} {'bytes/token':>12s}")
    for vocab in args.vocab:
        train_times, enc_times = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            tok = BPETokenizer.train(text, vocab_size=vocab, special_tokens=["<|endoftext|>"])
            train_times.append(time.perf_counter() - t0)
            fresh = BPETokenizer(tok.merges, ["<|endoftext|>"])  # an empty encode cache
            t0 = time.perf_counter()
            ids = fresh.encode(text)
            enc_times.append(time.perf_counter() - t0)
        assert fresh.decode(ids) == text
        print(f"{tok.vocab_size:6d} {statistics.median(train_times):8.2f} "
              f"{statistics.median(enc_times):9.2f} {len(text.encode('utf-8')) / len(ids):12.2f}")


if __name__ == "__main__":
    main()
