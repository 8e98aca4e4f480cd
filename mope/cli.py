"""`python -m mope …`: a thin shell over the library. Errors a person can cause print one line, no traceback."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .errors import MopeError


def _eval(args) -> None:
    from . import evaluate, load_model, load_task

    clip = load_model(args.model, device=args.device)
    task = load_task(args.data, kind=args.task, n=args.n, seed=args.seed, image_root=args.image_root)
    metrics = evaluate(clip, task, batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"model": clip.spec, "task": task.name, "images": len(task), "skipped": task.skipped,
                          "metrics": metrics}))
        return
    print(f"model {clip.name}  task {task.name}  images {len(task)}" + (f"  skipped {task.skipped}" if task.skipped else ""))
    for name, value in metrics.items():
        print(f"  {name:<28} {value:.4f}")


def _train_demo(args) -> None:
    import torch

    from .demo import train_demo

    torch.set_num_threads(args.threads)
    train_demo(out=Path(args.out), steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
               resume=args.resume)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mope", description="MoPE-CLIP Explorer command line")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("eval", help="zero-shot metrics of a model on a task")
    p.add_argument("--model", default="demo", help="model spec (demo, NAME:TAG, NAME:/ckpt, hf-hub:…, folder)")
    p.add_argument("--data", default="shapes", help="shapes[:target=…,seed=…], folder:PATH, pairs:FILE, cifar10, cifar100")
    p.add_argument("--task", choices=["zeroshot", "retrieval"], default=None)
    p.add_argument("--n", type=int, default=None, help="use n images")
    p.add_argument("--seed", type=int, default=None, help="shapes seed (default: the held-out seed 1000)")
    p.add_argument("--image-root", default=None, help="folder that relative image paths in pairs:FILE start from")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_eval)

    p = sub.add_parser("train-demo", help="train the demo CLIP on the shapes world (seeded)")
    p.add_argument("--out", default="assets/demo-clip")
    p.add_argument("--steps", type=int, default=1600)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="continue from the folder's train_state.pt")
    p.set_defaults(func=_train_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except MopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
