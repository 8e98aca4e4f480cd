"""`python -m app [--host 127.0.0.1] [--port 7860] [--auth user:pass]`."""
import argparse

from .ui import build


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m app")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: local only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--auth", default=None, help="user:pass required to open the page")
    args = parser.parse_args()
    auth = tuple(args.auth.split(":", 1)) if args.auth else None
    build().launch(server_name=args.host, server_port=args.port, auth=auth, share=False)


main()
