"""Real text that ships with Python itself: nothing is downloaded.

  pydoc_text()    the CPython documentation topics (``pydoc_data.topics``): ~465 KB of English
                  prose about the language, with code snippets. The default corpus of the labs.
  stdlib_code()   Python standard-library source files: a code corpus.

``train_val_split`` splits any text deterministically (the last fraction is validation).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path


class CorpusUnavailableError(RuntimeError):
    """Raised when this Python build lacks the files a corpus is made from."""


def pydoc_text() -> str:
    """The CPython documentation topics, joined in sorted key order (deterministic)."""
    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # some minimal Python builds (e.g. slim distro packages) strip it
        raise CorpusUnavailableError(
            "the 'pydoc' corpus needs pydoc_data.topics, which this Python build lacks: install the "
            "full Python standard library (e.g. Debian's python3-doc / libpython3-stdlib) or use "
            "--data code, --data markov or --data mixture instead"
        ) from err
    return "\n\n".join(topics[key].strip() for key in sorted(topics))


# A fixed, sorted list of stdlib modules keeps the code corpus identical from run to run.
_CODE_MODULES = (
    "argparse.py", "ast.py", "base64.py", "bisect.py", "calendar.py", "collections/__init__.py",
    "configparser.py", "contextlib.py", "copy.py", "csv.py", "dataclasses.py", "datetime.py",
    "difflib.py", "enum.py", "fractions.py", "functools.py", "heapq.py", "inspect.py",
    "json/decoder.py", "json/encoder.py", "logging/__init__.py", "operator.py", "pathlib.py",
    "pprint.py", "queue.py", "random.py", "shlex.py", "shutil.py", "statistics.py", "string.py",
    "textwrap.py", "threading.py", "tokenize.py", "typing.py", "uuid.py", "weakref.py",
)


def stdlib_code(max_bytes: int = 1_000_000) -> str:
    """Source of a fixed list of standard-library modules, concatenated, up to ``max_bytes``."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, total = [], 0
    for name in _CODE_MODULES:
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(f"# ---- {name}\n{text}")
        total += len(text)
        if total >= max_bytes:
            break
    if not parts:
        raise CorpusUnavailableError(
            f"no standard-library source found under {root}: this Python build ships only bytecode; "
            "use --data pydoc or a synthetic language instead"
        )
    return "".join(parts)[:max_bytes]


def train_val_split(text_or_tokens, val_fraction: float = 0.1):
    """Deterministic split: the first (1 - val_fraction) is training data, the rest validation."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    cut = int(len(text_or_tokens) * (1.0 - val_fraction))
    return text_or_tokens[:cut], text_or_tokens[cut:]
