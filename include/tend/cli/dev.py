"""Developer tools: the local SendGrid stand-in."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("fake-sendgrid", help="serve a local SendGrid stand-in (tests, "
                                              "benchmarks, rehearsals without an account)")
    sp.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: 127.0.0.1, this machine only)")
    sp.add_argument("--port", type=int, default=8089, help="0: any free port (printed)")
    sp.add_argument("--api-key", help="accept only this key (default: any Bearer key)")
    sp.add_argument("--latency-ms", type=float, default=0.0,
                    help="delay every answer, e.g. 20 (SendGrid answers in ~20-200 ms)")
    sp.add_argument("--fault-rate", type=float, default=0.0,
                    help="share of requests that get a fault, e.g. 0.1")
    sp.add_argument("--faults", default="429,503,500,slow,drop",
                    help="comma-separated fault kinds among 429,503,500,slow,drop,reset,400,413,"
                         "401,403 (see tend.dev.fake_sendgrid)")
    sp.add_argument("--seed", type=int, default=None,
                    help="seed of the fault draws, for a run that repeats (default: random)")
    sp.add_argument("--reset-ms", type=int, default=1000, help="429: when the limit resets")
    sp.add_argument("--slow-ms", type=int, default=5000, help="slow: how late the 202 comes")
    sp.add_argument("--hold-429", action="store_true",
                    help="model an account limit: after a 429, refuse every request until its "
                         "reset (default: a 429 is a fault of that one request)")
    sp.add_argument("--record", type=Path, help="append every accepted message to this JSONL")
    sp.add_argument("--keep-payloads", action="store_true",
                    help="keep whole payloads in memory and in --record (default: summaries)")
    sp.set_defaults(run=_fake_sendgrid)


def _fake_sendgrid(args: argparse.Namespace) -> None:
    from tend.dev.fake_sendgrid import run_from_args

    run_from_args(args, sys.stdout)
