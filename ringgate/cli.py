"""`ringgate serve` (the supervisor), `ringgate status` / `ringgate top` (read the instance's shared
memory) and `ringgate flusher N` (started by the supervisor)."""

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
    instance_help = "instance to read (default: RINGGATE_INSTANCE, else <host name>-$RINGGATE_PORT, as serve derives it)"
    status = sub.add_parser("status", help="rings, flushers, workers and records/s, read from shared memory")
    status.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    status.add_argument("--interval", type=float, default=1.0,
                        help="seconds between the two samples that records/s come from (0: no rates)")
    status.add_argument("--instance", help=instance_help)
    top = sub.add_parser("top", help="status refreshed every second until q or Ctrl-C")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top.add_argument("--instance", help=instance_help)
    flusher = sub.add_parser("flusher", help=argparse.SUPPRESS)
    flusher.add_argument("ring", type=int)
    args = parser.parse_args(argv)
    if args.command == "serve":
        from .supervisor import main as serve_main

        return serve_main()
    if args.command in ("status", "top"):
        return _observe(args)
    from .flusher import main as flusher_main

    return flusher_main(args.ring)


def _observe(args: argparse.Namespace) -> int:
    from . import status
    from .config import Settings
    from .errors import ConfigurationError

    try:
        # --instance is checked by the same rule as RINGGATE_INSTANCE (it names files in /dev/shm)
        environ = {"RINGGATE_INSTANCE": args.instance} if args.instance is not None else None
        instance = Settings.from_environ(environ).instance
    except ConfigurationError as exc:
        print(f"ringgate: {exc}", file=sys.stderr)
        return 2
    if args.command == "top":
        return status.top(instance, interval=max(0.1, args.interval))
    return status.print_status(instance, as_json=args.json, interval=args.interval)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
