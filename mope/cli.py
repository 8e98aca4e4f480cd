"""`python -m mope …`: a thin shell over the library. Errors a person can cause print one line, no traceback."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .data.tasks import PROTOCOLS
from .errors import MopeError
from .results import EVAL_FORMATS
from .validate import cli_args, rescore_images


def _eval(args) -> None:
    from . import evaluate, load_model, load_task
    from .results import check_out_file

    if args.out and args.format != "clip_benchmark":
        raise MopeError("--out writes CLIP_benchmark's JSON: add --format clip_benchmark")
    if args.out:
        check_out_file(args.out)
    clip = load_model(args.model, device=args.device)
    task = load_task(args.data, protocol=args.task, n=args.n, seed=args.seed, image_root=args.image_root)
    metrics = evaluate(clip, task, batch_size=args.batch_size)
    if args.format == "clip_benchmark":
        _write_clip_benchmark(args, task.protocol, metrics)
        return
    if args.json:
        print(json.dumps({"model": clip.spec, "task": task.name, "images": len(task), "skipped": task.skipped,
                          "metrics": metrics}))
        return
    print(f"model {clip.name}  task {task.name}  images {len(task)}" + (f"  skipped {task.skipped}" if task.skipped else ""))
    for name, value in metrics.items():
        print(f"  {name:<28} {value:.4f}")


def _write_clip_benchmark(args, protocol: str, metrics: dict) -> None:
    from .results import clip_benchmark_record, write_clip_benchmark

    record = clip_benchmark_record(args.model, args.data, protocol, metrics)
    if args.out:
        print(f"{record['task']} of {args.model} on {args.data} -> {write_clip_benchmark(record, args.out)}")
    else:
        print(json.dumps(record))


def _export(args) -> None:
    from . import load_model
    from .export import check_export, export

    check_export(args.out, args.format)  # before the model loads: a bad format or folder fails at once
    clip = load_model(args.model, device=args.device or "cpu")
    meta = export(clip, args.out, format=args.format, opset=args.opset)
    for tower in ("vision", "text"):
        print(f"{tower:<6} {Path(args.out) / meta['files'][tower]}  max |onnxruntime - torch| = "
              f"{meta['max_abs_diff'][tower]:.2e}")
    print(f"opset {meta['opset']}, dynamic batch; inputs and preprocessing in {Path(args.out) / 'export.json'}")


def _csv_list(text: str, aliases: dict[str, str] | None = None) -> list[str]:
    aliases = aliases or {}
    return [aliases.get(x.strip(), x.strip()) for x in text.split(",") if x.strip()]


def _score(args) -> None:
    from . import importance, load_model, load_task
    from .scoring import Cancelled, baseline_correlations, save_scores, score_distributed

    clip = load_model(args.model, device=args.device)
    task = load_task(args.data, protocol=args.task, n=args.n, seed=args.seed, image_root=args.image_root)
    rounds: list[int] = []

    def keep_round(table) -> None:  # anytime: --out holds the table so far, so a stop leaves the last round's
        save_scores(table, Path(args.out))
        rounds.append(table.attrs["anytime"]["round"])

    anytime, alone = args.schedule == "anytime", os.environ.get("WORLD_SIZE", "1") == "1"  # not under torchrun
    try:
        with _first_ctrl_c_stops(alone) as stop, _progress_bar("scoring", args.quiet) as progress:
            df = score_distributed(clip, task, towers=_csv_list(args.towers),
                                   units=_csv_list(args.units, {"heads": "head", "layers": "layer"}),
                                   metric=args.metric, impl=args.impl, group_size=args.group_size,
                                   baselines=_csv_list(args.baselines), precision=args.precision,
                                   cache=not args.no_cache, progress=progress, chunk=args.chunk,
                                   max_memory=args.max_memory, schedule=args.schedule, first_round=args.first_round,
                                   first_table_seconds=args.first_table_seconds,
                                   on_table=keep_round if anytime else None, should_stop=stop)
    except (Cancelled, KeyboardInterrupt) as e:
        if not alone or (isinstance(e, KeyboardInterrupt) and not anytime):
            raise
        print(_stopped_line(e, args.out, rounds), file=sys.stderr)
        raise SystemExit(130) from None
    if df is None:  # a torchrun rank other than 0
        return
    save_scores(df, Path(args.out))
    print(f"{len(df)} units scored on {task.name} ({df['base'].iloc[0]:.4f} {args.metric or 'default metric'} "
          f"unablated) -> {args.out}")
    if any(b in df.columns for b in importance.baselines()):
        print("Spearman rank correlation of MoPE with each baseline:")
        print(baseline_correlations(df).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


class _first_ctrl_c_stops:
    """The first Ctrl-C asks the scoring to stop (it caches its work and raises Cancelled), a second one interrupts
    at once; inactive (torchrun), Ctrl-C interrupts as usual. Yields the should_stop callable."""

    def __init__(self, active: bool):
        self.active, self.asked, self.previous = active, False, None

    def __enter__(self):
        import signal
        import threading

        if (self.active and threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):  # not when SIGINT is ignored (&)
            self.previous = signal.signal(signal.SIGINT, self.ask)
        return (lambda: self.asked) if self.active else None

    def ask(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        print("\nstopping after the current pass (Ctrl-C again to interrupt at once)", file=sys.stderr)

    def __exit__(self, *exc) -> None:
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


def _stopped_line(stop: BaseException, out: str, rounds: list[int]) -> str:
    """What a score stopped by Ctrl-C left, and how to go on."""
    how = (str(stop) if isinstance(stop, MopeError)  # says what is cached and that a restart continues from it
           else "interrupted: the rounds finished before are cached, and the same command continues from them")
    kept = (f"{out} holds the table of round {rounds[-1]} (estimates: plans from it say so)" if rounds
            else f"nothing was written to {out}")
    return f"{how}; {kept}"


class _progress_bar:
    """A tqdm bar fed by the library's progress callback (done, total, eta, rows)."""

    def __init__(self, desc: str, quiet: bool = False):
        self.desc, self.quiet, self.bar = desc, quiet, None

    def __enter__(self):
        return self.update

    def update(self, done: int, total: int, eta, rows) -> None:
        from tqdm import tqdm

        if self.quiet:
            return
        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit="unit")
        self.bar.update(done - self.bar.n)

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.close()


def _prune(args) -> None:
    from . import load_model, load_task
    from .pipeline import check_steps, prune_model
    from .planning import Budget, Plan
    from .pruned import save_pruned
    from .scoring import load_scores
    from .stability import stability_line

    out = Path(args.out)
    if out.exists():
        raise MopeError(f"{out} already exists: choose a new output folder")
    clip = load_model(args.model, device=args.device)
    scores = load_scores(args.scores) if args.scores else None
    towers = tuple(_csv_list(args.towers))
    budget = Budget(keep=args.keep, heads=args.heads, neurons=args.neurons,
                    layers=args.depth or None, strategy=args.strategy, measure=args.measure, towers=towers)
    check_steps(args.iterative, args.step_schedule)
    rescore = scores is None or args.depth or args.iterative > 1
    task = load_task(args.data, n=args.n, seed=args.seed) if rescore else None
    with _progress_bar("scoring", args.quiet) as progress:
        pruned = prune_model(clip, task, budget, scores=scores, by=args.by, progress=progress,
                             steps=args.iterative, step_schedule=args.step_schedule,
                             rescore_margin=args.rescore_margin, rescore_images=args.rescore_images)
    save_pruned(pruned, out)
    for step in pruned.info["plan"]:
        step = Plan.from_dict(step)
        print(step.summary().to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        print(stability_line(step.stability) if step.stability else
              "stability: not measured (no per-image results cached for these scores, or not ranked by mope)")
    print(f"saved to {out}")


def _bench(args) -> None:
    from . import load_model
    from .speed import speed_table

    clip = load_model(args.model, device=args.device)
    df = speed_table(clip, batches=[int(b) for b in _csv_list(args.batch)], repeats=args.repeats)
    print(f"model {clip.name} on {clip.device}")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def _distill(args) -> None:
    from dataclasses import fields

    from . import load_model, load_task
    from .distill import DistillConfig, distill
    from .pruned import save_pruned

    out = Path(args.out)
    final = out / "final"
    if final.exists():
        raise MopeError(f"{final} already exists: choose a new --out folder")
    if out.exists() and not args.resume and (out / "checkpoint").exists():
        raise MopeError(f"{out} holds a checkpoint: add --resume to continue it, or choose a new --out folder")
    config = DistillConfig(**{f.name: getattr(args, f.name) for f in fields(DistillConfig) if hasattr(args, f.name)})
    _init_distributed(args.device)
    teacher = load_model(args.teacher, device=_local_device(args.device))
    student = load_model(args.student, device=_local_device(args.device))
    task = load_task(args.eval_data, n=args.eval_n) if args.eval_data else None
    bar = _LossBar(config.steps, args.quiet)
    try:
        student = distill(teacher, student, args.data, config, out, eval_task=task, resume=args.resume,
                          progress=bar.update, image_root=args.image_root)
    finally:
        bar.close()
    if _is_rank0():
        save_pruned(student, final)
        history = student.info["distill"]["history"]
        if history:
            print("eval: " + ", ".join(f"{k} {v:.4f}" for k, v in history[-1].items() if k != "step"))
        print(f"distilled {student.info['distill']['steps_done']} steps -> {final}")


class _LossBar:
    """tqdm bar whose postfix shows the loss terms and the last evaluation."""

    def __init__(self, total: int, quiet: bool):
        from tqdm import tqdm

        self.bar = None if quiet or not _is_rank0() else tqdm(total=total, desc="distilling", unit="step")

    def update(self, step, total, eta, info) -> None:
        if self.bar is None:
            return
        post = {k: f"{v:.4f}" for k, v in info["losses"].items() if k != "step"}
        if info.get("time"):  # the share of the step spent waiting for data
            post["data wait"] = f"{info['time']['data_s'] / max(1e-9, sum(info['time'].values())):.0%}"
        if info["eval"]:
            post.update({k: f"{v:.3f}" for k, v in info["eval"].items() if k in ("acc1", "recall_mean")})
        self.bar.set_postfix(post, refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _init_distributed(device) -> None:
    """Under torchrun, join the process group (nccl on GPUs, gloo on CPUs)."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        dist.init_process_group("nccl" if cuda else "gloo")


def _local_device(device):
    import os

    import torch

    if (device is None and torch.cuda.is_available()) or (device or "").startswith("cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device or "cpu"


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not dist.is_initialized() or dist.get_rank() == 0


def _worker(args) -> None:
    from .jobs import Store, work

    work(Store(), concurrency=args.concurrency, idle_exit=args.idle_exit)


def _jobs(args) -> None:
    import time

    from .jobs import Store, ensure_worker

    store = Store()
    if args.action != "submit" and args.action != "list" and not args.id:
        raise MopeError(f"'jobs {args.action}' needs a job id")
    if args.action == "submit":
        if not args.kind:
            raise MopeError("'jobs submit' needs --kind (ping, evaluate, score, study, prune, distill, prune-and-distill, export)")
        params = dict(_param(kv) for kv in args.param)
        job_id = store.submit(args.kind, params)
        pid = None if args.no_worker else ensure_worker(store, concurrency=args.concurrency)
        print(job_id + (f"  (started worker pid {pid})" if pid else ""))
    elif args.action == "list":
        for job in store.jobs():
            prog = job["progress"]
            where = f"{prog.get('step')}/{prog.get('total')}" if prog else ""
            print(f"{job['id']}  {job['kind']:18s} {job['status']:9s} {where:>12s}  "
                  f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(job['created']))}")
    elif args.action == "show":
        store.reap()
        print(json.dumps(store.get(args.id), indent=2, default=str))
    elif args.action == "cancel":
        print(f"{args.id}: {store.cancel(args.id)['status']} (cancel requested)")
    elif args.action == "logs":
        print("\n".join(store.get(args.id)["log"]))
    elif args.action == "resume":
        job_id = store.resume(args.id)
        ensure_worker(store, concurrency=args.concurrency)
        print(job_id)


def _param(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise MopeError(f"--param takes KEY=VALUE, got '{text}'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _train_demo(args) -> None:
    import torch

    from .demo import RECIPE, train_demo

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "training-log.txt", "a" if args.resume else "w", encoding="utf-8") as log_file:
        def log(line: str) -> None:
            print(line, flush=True)
            log_file.write(line + "\n")
            log_file.flush()

        recipe = {k: getattr(args, k) for k in ("steps", "batch_size", "lr", "seed", "placement", "grid_every")}
        freeze = {"freeze_text": True} if args.freeze_text else {}
        train_demo(out=out, resume=args.resume, log=log, init=args.init, workers=args.workers,
                   **{**RECIPE, **freeze, **{k: v for k, v in recipe.items() if v is not None}})


DISTILL_HELP = {"affinity": "weight of the cross-modal affinity loss",
                "feature": "weight of the embedding (uni-modal) loss",
                "hidden": "weight of the hidden-state loss",
                "contrastive": "weight of the ground-truth CLIP loss",
                "precision": "auto: bf16 autocast on CUDA, fp32 on CPU",
                "workers": "data-loading worker processes (None: half the CPU cores, at most 8; 0: none)"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mope", description="MoPE-CLIP Explorer command line")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_eval(sub)
    _add_export(sub)
    _add_score(sub)
    _add_prune(sub)
    _add_bench(sub)
    _add_distill(sub)
    _add_worker(sub)
    _add_jobs(sub)
    _add_train_demo(sub)
    return parser


def _add_eval(sub) -> None:
    from . import defaults

    p = sub.add_parser("eval", help="zero-shot metrics of a model on a task")
    p.add_argument("--model", default="demo", help="model spec (demo, NAME:TAG, NAME:/ckpt, hf-hub:…, folder)")
    p.add_argument("--data", default=defaults.DATA, help="shapes[:target=…,placement=grid|free,seed=…], folder:PATH, pairs:FILE, "
                                                        "cifar10, cifar100")
    p.add_argument("--task", choices=PROTOCOLS, default=None)
    p.add_argument("--n", type=int, default=None, help="use n images")
    p.add_argument("--seed", type=int, default=None, help="shapes seed (default: the held-out seed 1000)")
    p.add_argument("--image-root", default=None, help="folder that relative image paths in pairs:FILE start from")
    p.add_argument("--batch-size", type=int, default=defaults.evaluate()["batch_size"])
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--format", choices=EVAL_FORMATS, default="text",
                   help="clip_benchmark: CLIP_benchmark's result JSON (to --out, or printed)")
    p.add_argument("--out", default=None, help="new file for the clip_benchmark JSON")
    p.set_defaults(func=_eval)


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="both towers as ONNX graphs (dynamic batch), checked with onnxruntime")
    p.add_argument("--model", default="demo", help="model spec (demo, NAME:TAG, hf-hub:…, a pruned-model folder)")
    p.add_argument("--format", default="onnx", help="onnx")
    p.add_argument("--opset", type=int, default=None, help="ONNX opset (default 23: onnxruntime's fused Attention op)")
    p.add_argument("--device", default=None, help="where the model loads (default cpu); export runs on the CPU")
    p.add_argument("--out", required=True, help="new folder for image.onnx, text.onnx and export.json")
    p.set_defaults(func=_export)


def _add_score(sub) -> None:
    from . import defaults, importance
    scoring = defaults.score()

    p = sub.add_parser("score", help="MoPE score of every unit (one row per unit, CSV)")
    p.add_argument("--model", default="demo")
    p.add_argument("--data", default=defaults.DATA)
    p.add_argument("--task", choices=PROTOCOLS, default=None)
    p.add_argument("--n", type=int, default=defaults.CALIBRATION_N, help="calibration images")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--image-root", default=None)
    p.add_argument("--towers", default=",".join(scoring["towers"]))
    p.add_argument("--units", default=",".join(scoring["units"]), help="head(s), neurons, layer(s)")
    p.add_argument("--metric", default=scoring["metric"], help="acc1 (zeroshot default), recall_mean (retrieval default), loss, …")
    p.add_argument("--impl", choices=["fast", "naive"], default=scoring["impl"])
    p.add_argument("--group-size", type=int, default=scoring["group_size"],
                   help="FFN neurons per group (default: 64 or a divisor)")
    p.add_argument("--baselines", default=",".join(importance.baselines()),
                   help=f"comma list of {', '.join(importance.baselines())}, or '' for none")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=scoring["precision"], help="autocast on GPU")
    p.add_argument("--no-cache", action="store_true", help="recompute even when cached scores exist")
    p.add_argument("--chunk", type=int, default=None,
                   help="images (texts) held at once; default: what one ablation pass holds. Results do not change")
    p.add_argument("--max-memory", type=float, default=None,
                   help="GiB one batched ablation pass may use (sets its size; see the README's memory formula; "
                        "default: 1.5 on a CPU, 2^17 tokens on a GPU)")
    p.add_argument("--schedule", default="exact",
                   help="exact, or anytime: every unit on a few images first, refined in rounds to the exact scores")
    p.add_argument("--first-round", type=int, default=None,
                   help="anytime: images per unit in round 1, the hardest first (default: a sixteenth of --n, at least 16)")
    p.add_argument("--first-table-seconds", type=float, default=None,
                   help="anytime: round 1 runs as many images per unit as fit this many seconds here (measured speed; "
                        "fewer than 16: an unpadded first look, re-run later)")
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--out", default="scores.csv")
    p.set_defaults(func=_score)


def _margin(text: str) -> float | None:
    """--rescore-margin: a number >= 1, or 'all'."""
    if text.strip().lower() == "all":
        return None
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number >= 1 or 'all'") from None
    if not 1 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is below 1 (use a number >= 1, or 'all' to re-score every unit)")
    return value


def _images(text: str) -> int | float | str | None:
    """--rescore-images: 'auto', a count (whole number >= 1), a fraction in (0, 1], or 'all'."""
    try:
        value = rescore_images(text, "--rescore-images")
    except MopeError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return None if value == "all" else value


def _add_prune(sub) -> None:
    from . import defaults, importance
    pruning = defaults.prune()

    p = sub.add_parser("prune", help="prune a model by its scores and save the smaller model")
    p.add_argument("--model", default="demo")
    p.add_argument("--scores", default=None, help="scores CSV from 'score' (default: score now on --data)")
    p.add_argument("--keep", type=float, default=None, help="fraction of each tower's transformer params kept by width pruning")
    p.add_argument("--heads", type=int, default=None, help="heads removed from every layer (instead of --keep)")
    p.add_argument("--neurons", type=int, default=None, help="neuron groups removed from every layer (instead of --keep)")
    p.add_argument("--depth", type=int, default=0, help="layers removed after width pruning (re-scored on --data)")
    p.add_argument("--iterative", type=int, default=pruning["steps"], metavar="K",
                   help="reach the width budget in K steps, re-scoring the pruned model on --data before each (default 1: one-shot)")
    p.add_argument("--step-schedule", choices=["even", "geometric"], default=pruning["step_schedule"],
                   help="how the K steps share the removal: even shares or equal ratios (more early)")
    p.add_argument("--rescore-margin", type=_margin, default=pruning["rescore_margin"], metavar="M|all",
                   help="before steps 2..K re-score only the units a plan of M x the removal still to come would take "
                        "(cheaper, less accurate; default 'all': every remaining unit)")
    p.add_argument("--rescore-images", type=_images, default=pruning["rescore_images"], metavar="auto|N|F|all",
                   help="re-score before steps 2..K on N calibration images (or the fraction F of them), the first in "
                        "anytime scoring's order on the model being re-scored (highest loss; acc1: nearest the decision); "
                        "'auto': as many as keep all re-scorings within one full sweep's work (smaller models get more) "
                        f"(default {pruning['rescore_images']}; 'all': every image)")
    p.add_argument("--towers", default=",".join(pruning["towers"]))
    p.add_argument("--strategy", choices=["uniform", "global"], default=pruning["strategy"])
    p.add_argument("--measure", choices=["params", "flops"], default=pruning["measure"])
    p.add_argument("--by", default=pruning["by"], help=f"rank by this column: {', '.join(importance.names())} (or any "
                   "column of --scores)")
    p.add_argument("--data", default=defaults.DATA, help="calibration data for scoring (layers, or all when no --scores)")
    p.add_argument("--n", type=int, default=defaults.CALIBRATION_N)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True, help="new folder for the pruned model")
    p.set_defaults(func=_prune)


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="params, GFLOPs, latency and throughput per tower")
    p.add_argument("--model", default="demo")
    p.add_argument("--batch", default="1,8,32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default=None)
    p.set_defaults(func=_bench)


def _add_distill(sub) -> None:
    from . import defaults

    p = sub.add_parser("distill", help="recover a pruned student by distilling it from its teacher")
    p.add_argument("--teacher", default="demo")
    p.add_argument("--student", required=True, help="pruned-model folder")
    p.add_argument("--data", default=defaults.DATA, help="shapes, pairs:FILE (CSV/JSONL) or wds:/path/shard-*.tar")
    p.add_argument("--image-root", default=None)
    types = defaults.distill_types()
    for name, default in defaults.distill().items():  # one option per DistillConfig field, with its default
        p.add_argument(f"--{name.replace('_', '-')}", type=types[name], default=default,
                       help=f"{DISTILL_HELP.get(name, name.replace('_', ' '))} (default {default})",
                       **({"choices": ["auto", "bf16", "fp32"]} if name == "precision" else {}))
    p.add_argument("--eval-data", default=defaults.DATA, help="held-out task evaluated every --eval-every steps ('' for none)")
    p.add_argument("--eval-n", type=int, default=defaults.EVAL_N)
    p.add_argument("--device", default=None)
    p.add_argument("--resume", action="store_true", help="continue from --out's last checkpoint")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--out", required=True)
    p.set_defaults(func=_distill)


def _add_worker(sub) -> None:
    p = sub.add_parser("worker", help="run queued background jobs")
    p.add_argument("--concurrency", type=int, default=1, help="jobs at once (CPU); GPU jobs run one at a time")
    p.add_argument("--idle-exit", type=float, default=None, help="exit after this many idle seconds")
    p.set_defaults(func=_worker)


def _add_jobs(sub) -> None:
    p = sub.add_parser("jobs", help="submit, list, show, cancel, resume background jobs")
    p.add_argument("action", choices=["submit", "list", "show", "cancel", "logs", "resume"])
    p.add_argument("id", nargs="?", help="job id (show, cancel, logs, resume)")
    p.add_argument("--kind", default=None, help="submit: ping, evaluate, score, study, prune, distill, prune-and-distill, export")
    p.add_argument("--param", action="append", default=[], help="submit: KEY=VALUE (JSON values allowed), repeatable")
    p.add_argument("--no-worker", action="store_true", help="submit: do not start a worker")
    p.add_argument("--concurrency", type=int, default=1)
    p.set_defaults(func=_jobs)


def _add_train_demo(sub) -> None:
    p = sub.add_parser("train-demo", help="train the demo CLIP on the shapes world (seeded)")
    p.add_argument("--out", default="assets/demo-clip", help="model folder; also gets training-log.txt and train-state.pt")
    p.add_argument("--steps", type=int, help="default: the recipe's (mope.demo.RECIPE), as are the next five")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--placement", choices=("grid", "free"), help="shapes placement")
    p.add_argument("--grid-every", type=int, help="every N-th batch uses grid placement (0: never)")
    p.add_argument("--init", help="start from this model folder's weights (same architecture) instead of scratch")
    p.add_argument("--freeze-text", action="store_true", help="train only the image tower (with --init)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--workers", type=int, default=None, help=DISTILL_HELP["workers"])
    p.add_argument("--resume", action="store_true",
                   help="continue from the folder's train-state.pt (same arguments); the log is appended")
    p.set_defaults(func=_train_demo)


def main(argv: list[str] | None = None) -> int:
    import warnings

    warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
    args = build_parser().parse_args(argv)
    try:
        cli_args(args)  # every number, list, spec and path checked before any work
        args.func(args)
    except MopeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
