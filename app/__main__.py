"""`python -m app [--host 127.0.0.1] [--port 7860] [--auth user:pass] [--models DIR] [--data DIR] [--home DIR]`."""
import argparse
import logging
import os
import time


def main() -> None:
    started = time.time()
    parser = argparse.ArgumentParser(prog="python -m app", description="MoPE-CLIP Explorer, served locally")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--auth", default=None, help="user:pass required to open the page")
    parser.add_argument("--models", action="append", default=[], metavar="DIR",
                        help="a folder local models may be loaded from (repeatable; $MOPE_HOME/models always)")
    parser.add_argument("--data", action="append", default=[], metavar="DIR",
                        help="a folder server-side calibration / training data may be read from (repeatable)")
    parser.add_argument("--home", default=None, help="where jobs, scores and models are kept (default $MOPE_HOME "
                                                     "or ~/.cache/mope)")
    args = parser.parse_args()
    if args.auth and ":" not in args.auth:
        parser.error("--auth takes user:pass")
    if args.home:
        os.environ["MOPE_HOME"] = os.path.abspath(os.path.expanduser(args.home))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("app").setLevel(logging.INFO)

    from mope.errors import MopeError

    from .handlers import Settings, model_card
    from .ui import build

    settings = Settings(model_dirs=args.models, data_dirs=args.data)
    try:
        model_card("demo", settings)  # the demo model is loaded and measured before the page opens
    except MopeError as e:
        logging.getLogger("app").warning("demo model not loaded: %s", e)
    for folder in ("downloads", "samples"):
        (settings.home / folder).mkdir(parents=True, exist_ok=True)
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    demo = build(settings)
    demo.launch(server_name=args.host, server_port=args.port, auth=auth, share=False, max_file_size="200mb",
                allowed_paths=[str(settings.home / "downloads"), str(settings.home / "samples")],
                prevent_thread_lock=True)
    print(f"MoPE-CLIP Explorer ready at {demo.local_url} ({time.time() - started:.1f} s after start)", flush=True)
    demo.block_thread()


main()
