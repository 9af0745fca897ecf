"""What comes back: ``tend serve``, the public endpoints service."""

from __future__ import annotations

import argparse

from tend import config
from tend.cli.args import positive, store_arg


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("serve", help="serve the public endpoints: unsubscribe, preferences, "
                                      "survey answers and SendGrid's Event Webhook")
    store_arg(sp)
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; 0.0.0.0 in a container)")
    sp.add_argument("--port", type=int, default=config.DEFAULT_SERVE_PORT,
                    help=f"default {config.DEFAULT_SERVE_PORT}; 0: any free port (printed)")
    sp.add_argument("--workers", type=positive, default=1,
                    help="uvicorn worker processes (default 1)")
    sp.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> None:
    from tend.listen.serve import serve

    serve(store=args.store, host=args.host, port=args.port, workers=args.workers)
