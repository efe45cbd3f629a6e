"""`ringgate serve` (the supervisor) and `ringgate flusher N` (started by the supervisor)."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ringgate",
        description="HTTP ingestion gateway. Configured through RINGGATE_* environment variables (see README).",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the gateway: rings, flushers, HTTP workers")
    flusher = sub.add_parser("flusher", help=argparse.SUPPRESS)
    flusher.add_argument("ring", type=int)
    args = parser.parse_args(argv)
    if args.command == "serve":
        from .supervisor import main as serve_main

        return serve_main()
    from .flusher import main as flusher_main

    return flusher_main(args.ring)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
