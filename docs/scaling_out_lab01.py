"""Lab 01's scaling sweep as cluster jobs (docs/scaling-out.md): every run of the notebook's full
mode, one SLURM job each, cached where the notebook then finds them.

    pip install 'minilm[cluster]'
    python docs/scaling_out_lab01.py --cache $HOME/minilm/lab01_full.json --folder $HOME/minilm/jobs \\
        --partition gpu
    # then in labs/01_scaling_laws.ipynb: FAST = False and SWEEP_CACHE = "$HOME/minilm/lab01_full.json"

The grid is the notebook's (its LADDER, FIRST_RUNG, SIZES_PER_BUDGET; tests/test_executors.py
checks that they agree) and so are the settings, so the notebook's ``run_sweep`` calls hash every
run to a key already in the cache and train nothing. ``--fast`` submits the fast-mode grid,
``--cluster local`` runs the jobs as processes on this machine, ``--dry-run`` lists the runs.
Interrupted, or some runs failed? Run the same command again: only what is missing is submitted.
"""

from __future__ import annotations

import argparse
import sys

# solutions/01_scaling_laws.ipynb, the cell that sizes the experiments.
LADDER = [
    {"n_layers": 1, "n_heads": 2, "d_model": 8},
    {"n_layers": 1, "n_heads": 2, "d_model": 12},
    {"n_layers": 1, "n_heads": 2, "d_model": 16},
    {"n_layers": 1, "n_heads": 2, "d_model": 24},
    {"n_layers": 2, "n_heads": 2, "d_model": 24},
    {"n_layers": 2, "n_heads": 4, "d_model": 32},
    {"n_layers": 2, "n_heads": 4, "d_model": 40},
    {"n_layers": 2, "n_heads": 4, "d_model": 48},
    {"n_layers": 2, "n_heads": 4, "d_model": 64},
    {"n_layers": 3, "n_heads": 4, "d_model": 64},
    {"n_layers": 3, "n_heads": 4, "d_model": 80},
    {"n_layers": 4, "n_heads": 4, "d_model": 96},
    {"n_layers": 4, "n_heads": 8, "d_model": 128},
]


def grid(fast: bool) -> list[tuple[float, list[dict]]]:
    """(FLOP budget, the sizes trained at it) for each IsoFLOP budget of the notebook."""
    first_rung = [0, 2, 4] if fast else [0, 1, 3, 4, 6]
    sizes_per_budget = 4 if fast else 5
    return [(3e9 * 4 ** k, LADDER[r: r + sizes_per_budget]) for k, r in enumerate(first_rung)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", required=True, help="the sweep's JSON cache (on a filesystem the jobs see)")
    p.add_argument("--folder", default="minilm_jobs", help="submitit's folder for each job's pickles and logs")
    p.add_argument("--cluster", default="slurm", choices=("slurm", "local"))
    p.add_argument("--partition", default=None, help="SLURM partition")
    p.add_argument("--gpus-per-node", type=int, default=1)
    p.add_argument("--cpus-per-task", type=int, default=4)
    p.add_argument("--timeout-min", type=int, default=30, help="per run (the largest full-mode run needs minutes)")
    p.add_argument("--array-parallelism", type=int, default=32, help="runs at the same time, at most")
    p.add_argument("--seed", type=int, default=0, help="the notebook's SEED")
    p.add_argument("--fast", action="store_true", help="the fast-mode grid instead of the full one")
    p.add_argument("--dry-run", action="store_true", help="list the runs, submit nothing")
    args = p.parse_args(argv)

    from minilm.scaling import fast_language, run_sweep

    budgets = grid(args.fast)
    print(f"lab 01, {'fast' if args.fast else 'full'} mode: {sum(len(s) for _, s in budgets)} runs "
          f"over {len(budgets)} FLOP budgets")
    if args.dry_run:
        for budget, sizes in budgets:
            print(f"  C = {budget:.3g} FLOPs: " + ", ".join(f"{s['n_layers']}x{s['d_model']}" for s in sizes))
        return 0
    from minilm.executors import SubmititExecutor

    params = {"timeout_min": args.timeout_min}
    if args.cluster == "slurm":
        params.update(gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                      slurm_array_parallelism=args.array_parallelism)
        if args.partition:
            params["slurm_partition"] = args.partition
    executor = SubmititExecutor(args.folder, cluster=args.cluster, **params)
    # One wave per budget, as the notebook runs them (its cache keys do not depend on the grouping);
    # runs of one budget cost the same FLOPs, so the waves add ~1/3 to the largest budget's time.
    trained = cached = 0
    for budget, sizes in budgets:
        result = run_sweep(sizes, None, fast_language(), args.cache, flop_budgets=[budget], seed=args.seed,
                           device="auto", executor=executor)
        trained, cached = trained + result.n_trained, cached + result.n_cached
        print(f"  C = {budget:.3g}: {result.n_trained} trained, {result.n_cached} cached, "
              f"{result.wall_time_s:.0f} s")
    print(f"done: {trained} runs trained, {cached} found in {args.cache}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
