"""``tend campaign upload-audience NAME FILE.csv``: a list of customer ids, stored for a
campaign's 'uploaded list' audience.

The file is a CSV export: a ``customer_id`` column (any other columns are ignored), or a single
column of ids with or without that header. Ids the shop does not know are left out and counted
(a list exported from another system often holds a few), never stored; uploading the same NAME
again replaces the list.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from tend.campaigns.form import NAME_PATTERN
from tend.errors import DataError
from tend.shop import schema as shop_schema
from tend.store import campaigns as stored
from tend.store import ledger
from tend.store.db import connect, require_current

MAX_BYTES = 200 * 1024 * 1024


@dataclass(frozen=True)
class Uploaded:
    name: str
    stored: int
    unknown: int
    repeated: int
    example_unknown: tuple[str, ...]

    def lines(self) -> list[str]:
        out = [f"audience {self.name}: {self.stored:,} customer(s) stored"]
        if self.unknown:
            out.append(f"{self.unknown:,} id(s) not in the shop's customers, left out (e.g. "
                       f"{', '.join(self.example_unknown)})")
        if self.repeated:
            out.append(f"{self.repeated:,} repeated id(s) counted once")
        return out


def read_ids(text: str, source: str) -> list[str]:
    """The customer ids of a CSV export (see the module's docstring)."""
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(f"{source} is empty; write one customer_id per line")
    header = [c.strip().lower() for c in rows[0]]
    if "customer_id" in header:
        col = header.index("customer_id")
        body = rows[1:]
    elif len(header) == 1:
        col, body = 0, rows
    else:
        raise DataError(f"{source} has {len(header)} columns and none is named customer_id; "
                        "add a customer_id header, or export only the ids")
    return [r[col].strip() for r in body if len(r) > col and r[col].strip()]


def upload_audience(store_url: str, shop_url: str, name: str, path: Path) -> Uploaded:
    if not re.fullmatch(NAME_PATTERN, name):
        raise DataError(f"{name!r} is not an audience name; write 2-60 lower-case letters, "
                        "digits, '-' or '_'")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise DataError(f"{path} is over {MAX_BYTES // 2**20} MB; split it")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError as exc:
        raise DataError(f"{path} not found") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text; export it as CSV UTF-8") from exc
    ids = read_ids(text, str(path))
    unique = list(dict.fromkeys(ids))
    cu = shop_schema.customers
    known: set[str] = set()
    with connect(shop_url).connect() as conn:
        for i in range(0, len(unique), 900):
            known.update(str(c) for c in conn.execute(
                select(cu.c.customer_id).where(cu.c.customer_id.in_(unique[i : i + 900])))
                .scalars())
    unknown = [c for c in unique if c not in known]
    keep = [c for c in unique if c in known]
    if not keep:
        raise DataError(f"none of the {len(unique):,} id(s) in {path} is a customer of the "
                        f"shop (e.g. {', '.join(unknown[:3])}); check the export's column")
    require_current(store_url)
    with connect(store_url).begin() as conn:
        n = stored.replace_audience(conn, name, keep, now=ledger.now())
    return Uploaded(name, n, len(unknown), len(ids) - len(unique), tuple(unknown[:3]))
