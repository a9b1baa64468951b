"""The ``minilm`` command line: train, info, bench, plus the lab and grading commands.

Bad user input ends with one clear line on stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import sys

from minilm import __version__


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    import numpy as np
    import torch

    from minilm.device import default_threads, resolve_device

    print(f"minilm {__version__}")
    print(f"python {platform.python_version()} ({platform.machine()}, {platform.system()})")
    print(f"torch {torch.__version__}, numpy {np.__version__}")
    print(f"cuda available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    mps = getattr(torch.backends, "mps", None)
    print(f"mps available: {bool(mps and mps.is_available())}")
    print(f"device='auto' chooses: {resolve_device('auto')}")
    n, reason = default_threads()
    print(f"minilm's default CPU threads: {n} ({reason}; MINILM_THREADS overrides); "
          f"torch now uses {torch.get_num_threads()} of {__import__('os').cpu_count()} logical CPUs")
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from minilm.labs.doctor import diagnose, report

    findings = diagnose()
    print(report(findings))
    return 0 if all(f.ok for f in findings) else 1


def _cmd_train(args: argparse.Namespace) -> int:
    from minilm import distributed

    # Under torchrun every process runs this command; rank 0 alone prints (and writes --out).
    with distributed.main_rank_prints():
        return _train(args, is_main=distributed.launched_rank() == 0)


def _train(args: argparse.Namespace, is_main: bool) -> int:
    import torch

    from minilm import distributed
    from minilm.data import load_dataset
    from minilm.device import resolve_device, seed_everything
    from minilm.models import build_model
    from minilm.train import evaluate, train

    distributed.configure_rank_threads(args.threads)  # under torchrun: this machine's cores shared out
    device = resolve_device(args.device)
    data = load_dataset(args.data, tokenizer=args.tokenizer, n_tokens=args.tokens, seed=args.seed)
    seed_everything(args.seed)
    extra = {"order": args.order} if args.order is not None else {}
    model = build_model(args.model, data.vocab_size, size=args.size, context_length=args.context, **extra)
    print(f"data {args.data}: {len(data.train):,} training tokens, vocab {data.vocab_size}; device {device}")
    if hasattr(model, "fit"):  # count-based models are fitted, not trained
        model.fit(data.train)
        print(f"model {args.model} (order {model.config.order}): {model.num_params():,} stored counts")
    else:
        print(f"model {args.model} ({args.size}): {model.num_params():,} parameters")
        train(model, data.train, data.val, steps=args.steps, batch_size=args.batch_size,
              context_length=args.context, lr=args.lr, device=device, seed=args.seed,
              eval_every=max(1, args.steps // 5), checkpoint_path=args.out, resume=args.resume)
        if not is_main:  # the other ranks' copies of the model are identical: rank 0 reports
            return 0
    val = evaluate(model, data.val, context_length=args.context, device=device, max_batches=20)
    print(f"validation loss {val:.4f} nats/token (perplexity {__import__('math').exp(val):.2f})")
    if data.entropy_rate is not None:
        print(f"exact entropy rate of the language: {data.entropy_rate:.4f} nats/token (no model can beat it)")
    if args.sample > 0:
        prompt = torch.as_tensor(data.val[: min(8, args.context)].astype("int64"), device=device)[None, :]
        g = torch.Generator(device=device).manual_seed(args.seed)
        out = model.generate(prompt, args.sample, temperature=0.8, top_k=None, generator=g)
        print("sample:\n" + data.decode(out[0].tolist()))
    if args.out:
        print(f"checkpoint saved to {args.out}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from minilm.bench import format_bench, run_bench

    print(format_bench(run_bench(steps=args.steps, threads=args.threads, device=args.device)))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from minilm.report import run

    return run(args.labs or None, folder=args.folder, reference=args.reference, as_json=args.json,
               compute=args.compute)


def build_parser() -> argparse.ArgumentParser:
    from minilm.data import DATASETS
    from minilm.models import MODELS, SIZES

    parser = argparse.ArgumentParser(prog="minilm", description="minilm: learn how LLMs are pre-trained efficiently")
    parser.add_argument("--version", action="version", version=f"minilm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model and print its validation loss and a sample",
                       description="Train a model and print its validation loss and a sample. Data-parallel on N "
                       "processes: torchrun --nproc_per_node N -m minilm train ... (--batch-size is the global batch)")
    p.add_argument("--model", default="gpt", choices=sorted(MODELS))
    p.add_argument("--data", default="pydoc", choices=DATASETS)
    p.add_argument("--tokenizer", default="char", choices=("char", "byte", "bpe"))
    p.add_argument("--size", default="tiny", choices=list(SIZES))
    p.add_argument("--order", type=int, default=None, help="n-gram order (ngram model only)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=12, help="sequences per step (under torchrun: over all processes)")
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--tokens", type=int, default=500_000, help="training tokens of a synthetic language")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: $MINILM_THREADS, else 1 on <= 2 cores, else physical cores - 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sample", type=int, default=200, help="tokens to sample after training (0: none)")
    p.add_argument("--out", default=None, help="checkpoint file to write")
    p.add_argument("--resume", action="store_true", help="continue from --out if it exists")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("info", help="versions, device and threads")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("doctor", help="is this machine ready for the labs? what to fix if not",
                       description="Check torch (version, CPU or CUDA build), the device and CPU threads minilm "
                       "will use, JupyterLab, widgets and plots, and the labs and chapters found; print the fix "
                       "for each problem. Exit status 1 when there is something to fix.")
    p.set_defaults(func=_cmd_doctor)

    p = sub.add_parser("bench", help="training throughput and MFU of the small CPU GPT")
    p.add_argument("--steps", type=int, default=90, help="timed steps per model (default 90)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: $MINILM_THREADS, else 1 on <= 2 cores, else physical cores - 1)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("report", help="your labs' recorded figures beside the papers' (agree / disagree / cannot "
                       "compare)", description="Set every figure your labs recorded (results/labNN.json) beside "
                       "the papers' figures it faces, with the source and a verdict. Exit status 1 when no record "
                       "is found.")
    p.add_argument("labs", nargs="*", metavar="LAB", help="lab ids (default: every record found)")
    p.add_argument("--folder", default=None, help="the records' folder (default: $MINILM_RESULTS_DIR, else ./results)")
    p.add_argument("--reference", action="store_true", help="the committed reference records in course/records/")
    p.add_argument("--json", action="store_true", help="print JSON for tools")
    p.add_argument("--compute", action="store_true", help="also your total training FLOPs beside the papers' budgets")
    p.set_defaults(func=_cmd_report)

    _add_course_commands(sub)
    return parser


def _add_course_commands(sub) -> None:
    """``release``, ``check``, ``grade``, ``gradescope`` (the engine), ``lab`` and ``course sync`` (the course).

    The grading engine knows no lab by name: its commands are handed the course's lab lookup.
    """
    from minilm.grading.cli import add_commands as grading_commands
    from minilm.labs import get_lab
    from minilm.labs.chapters import add_commands as chapter_commands
    from minilm.labs.runner import add_commands as lab_commands

    grading_commands(sub, find_lab=get_lab)
    lab_commands(sub, find_lab=get_lab)
    chapter_commands(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    from minilm.data import CorpusUnavailableError

    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, CorpusUnavailableError) as err:
        print(f"minilm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("minilm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
