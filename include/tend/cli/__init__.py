"""The ``tend`` command: the same functions the DAGs call, for analysts, replays and scripts.

Database URLs come from ``--db``/``--store``, else ``TEND_SHOP_URL``/``TEND_STORE_URL``, else the
embedded SQLite files under ``var/``. Errors Tend raises on purpose print one line that says how
to fix them and exit with status 2; anything else is a bug and shows its traceback.

Each module of this package declares the verbs of one area (``register(sub)``) and runs them
(each sub-parser's ``run`` default); this module only assembles them.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from sqlalchemy.exc import SQLAlchemyError

from tend.cli.args import stdout_gone
from tend.errors import TendError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    from tend.cli import (
        campaign,
        complaints,
        data,
        dev,
        exports,
        forget,
        listen,
        night,
        reconcile,
        report,
        templates,
    )

    p = argparse.ArgumentParser(prog="tend", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="-v: progress lines as in the Airflow task log; -vv: debug")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in (night, data, listen, templates, dev, complaints, exports, report, campaign,
                   reconcile, forget):
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=[logging.WARNING, logging.INFO, logging.DEBUG][min(args.verbose, 2)],
        format="%(message)s",
        stream=sys.stderr,
    )
    try:
        code = args.run(args) or 0
        sys.stdout.flush()  # here, where a closed pipe is caught, not at interpreter exit
        return code
    except TendError as exc:
        return _fail(str(exc))
    except BrokenPipeError:
        # whoever read the output stopped reading (`tend summary | head -1`): not an error
        stdout_gone()
        return 0
    except SQLAlchemyError as exc:
        from tend.store.db import explain

        why = explain(exc)
        if why is None:
            raise
        return _fail(why)


def _fail(message: str) -> int:
    """A problem the user can fix: one line on stderr (its first line), exit status 2."""
    lines = message.strip().splitlines() or [""]
    print(f"tend: {lines[0]}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
