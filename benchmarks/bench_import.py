"""How long does ``import minilm`` take, beyond ``import torch``? And what does it pull in?

    python benchmarks/bench_import.py [--repeats 15] [--compare /path/to/other/checkout]

Each figure is the median over ``repeats`` fresh Python processes (a new interpreter each time,
so nothing is cached in ``sys.modules``; the OS file cache is warm after the first round):
    (a) ``import torch``                      the floor nobody can avoid
    (b) ``import torch; import minilm``        only the second import is timed: minilm's own cost
    (c) ``import minilm``                      cold, torch included
The three run interleaved (a, b, c, a, b, c, ...) so a busy machine slows all of them alike.
``--compare`` times another checkout of the repository (e.g. the previous commit, unpacked with
``git archive HEAD | tar -x -C /tmp/old``) in the same rounds, side by side.

Then it lists the top-level modules outside the standard library that ``import minilm`` loads,
split into those torch already loads and those minilm adds (``sys.modules`` before and after).
Importing runs on one thread; torch's thread count is printed for the record.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What each child process runs; it prints one JSON line. perf_counter brackets the imports only,
# not the interpreter's start-up, which is the same for every case.
_TIMED = {
    "torch": "t0 = time.perf_counter(); import torch; dt = time.perf_counter() - t0",
    "minilm after torch": "import torch; t0 = time.perf_counter(); import minilm; dt = time.perf_counter() - t0",
    "minilm cold": "t0 = time.perf_counter(); import minilm; dt = time.perf_counter() - t0",
}
_CHILD = ("import json, sys, time\n{body}\n"
          "print(json.dumps({{'s': dt, 'file': getattr(sys.modules.get('minilm'), '__file__', None)}}))")

_MODULES = """
import json, sys
before = set(sys.modules)
import torch
after_torch = set(sys.modules)
import minilm
after = set(sys.modules)
# top-level packages, without the standard library and private helpers (_cython_..., __mp_main__)
top = lambda names: {n.split('.')[0] for n in names if not n.startswith('_')} - set(sys.stdlib_module_names)
print(json.dumps({'torch': sorted(top(after_torch) - top(before)),
                  'minilm': sorted(top(after) - top(after_torch) - {'minilm'}),
                  'threads': torch.get_num_threads()}))
"""


def _run(code: str, root: Path) -> dict:
    """Run ``code`` in a fresh interpreter that imports minilm from ``root``; parse its JSON line."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"child failed in {root}:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--compare", type=Path, default=None,
                        help="another checkout of the repository to time side by side (e.g. the previous commit)")
    args = parser.parse_args()
    roots = {"this tree": ROOT}
    if args.compare is not None:
        if not (args.compare / "minilm" / "__init__.py").is_file():
            raise SystemExit(f"--compare {args.compare}: no minilm/__init__.py there; pass a checkout's root")
        roots["compare"] = args.compare.resolve()

    times: dict[tuple[str, str], list[float]] = {(r, k): [] for r in roots for k in _TIMED}
    files = {}
    for _ in range(args.repeats):  # interleaved: every case once per round
        for r, root in roots.items():
            for k, body in _TIMED.items():
                res = _run(_CHILD.format(body=body), root)
                times[r, k].append(res["s"])
                files[r] = res["file"] or files.get(r)

    mods = {r: _run(_MODULES, root) for r, root in roots.items()}
    print(f"import times, median of {args.repeats} fresh processes, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs, torch threads {mods['this tree']['threads']} (importing is single-threaded)")
    for r in roots:
        print(f"  {r}: minilm from {files[r]}")
    header = f"{'':22s}" + "".join(f"{r:>14s}" for r in roots) + ("       ratio" if len(roots) == 2 else "")
    print(header)
    for k in _TIMED:
        meds = [statistics.median(times[r, k]) for r in roots]
        ratio = f"{meds[1] / meds[0]:11.1f}x" if len(meds) == 2 and meds[0] > 0 else ""
        print(f"{k:22s}" + "".join(f"{m:13.3f}s" for m in meds) + ratio)
    for r in roots:
        print(f"third-party modules ({r}): loaded by torch: {', '.join(mods[r]['torch']) or '-'}")
        print(f"{'':{len(r) + 23}s} added by minilm: {', '.join(mods[r]['minilm']) or '-'}")


if __name__ == "__main__":
    main()
