"""`python -m app [--host 127.0.0.1] [--port 7860] [--auth user:pass] [--models DIR] [--data DIR] [--home DIR]`.

The page is served first; torch, open_clip and the demo model load right after, in the background,
so the page is usable while the model card fills in.
"""
import argparse
import logging
import os
import threading
import time
from pathlib import Path


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(prog="python -m app", description="MoPE-CLIP Explorer, served locally")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--auth", default=None, help="user:pass required to open the page")
    parser.add_argument("--models", action="append", default=[], metavar="DIR",
                        help="a folder local models may be loaded from (repeatable; HOME/models always)")
    parser.add_argument("--data", action="append", default=[], metavar="DIR",
                        help="a folder server-side calibration / training data may be read from (repeatable)")
    parser.add_argument("--home", default=os.environ.get("MOPE_HOME", "~/.cache/mope"),
                        help="where jobs, scores and models are kept (default: $MOPE_HOME or ~/.cache/mope)")
    args = parser.parse_args()
    if args.auth and ":" not in args.auth:
        parser.error("--auth takes user:pass")
    home = Path(args.home).expanduser().resolve()
    os.environ["MOPE_HOME"] = str(home)  # the library, the worker and the app all use this folder
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("app").setLevel(logging.INFO)

    from .state import AppState
    from .ui import build  # Gradio: most of the time to 'ready'

    imported = time.time()
    for folder in ("downloads", "samples"):
        (home / folder).mkdir(parents=True, exist_ok=True)
    state = AppState(home, model_dirs=args.models, data_dirs=args.data)
    demo = build(state)
    built = time.time()
    demo.launch(server_name=args.host, server_port=args.port, auth=tuple(args.auth.split(":", 1)) if args.auth else None,
                share=False, max_file_size="200mb", allowed_paths=[str(home / "downloads"), str(home / "samples")],
                prevent_thread_lock=True, quiet=True)
    now = time.time()
    print(f"MoPE-CLIP Explorer ready at {demo.local_url} ({now - started:.1f} s after start: imports "
          f"{imported - started:.1f} s, page {built - imported:.1f} s, server {now - built:.1f} s)", flush=True)
    threading.Thread(target=warm_up, args=(state, started), daemon=True).start()
    demo.block_thread()


def warm_up(state, started: float) -> None:
    """Start the job worker (so the first job does not wait for it to import torch) and load and measure the demo
    model, so the first page's model card comes quickly; log when each was done."""
    log = logging.getLogger("app")
    try:
        from mope.jobs import ensure_worker

        if state.start_worker:
            ensure_worker(state.store(), idle_exit=600)
            log.info("job worker started %.1f s after start", time.time() - started)
    except Exception as e:  # noqa: BLE001 (a job started later says what it waits for)
        log.warning("worker not started: %s", e)
    try:
        from .handlers import model as handlers

        log.info("torch, open_clip and the handlers imported %.1f s after start", time.time() - started)
        handlers.model_card("demo", state)
        log.info("demo model loaded and measured (its card) %.1f s after start", time.time() - started)
    except Exception as e:  # noqa: BLE001 (the page reports it when it asks for the card)
        log.warning("demo model not loaded: %s", e)


main()
