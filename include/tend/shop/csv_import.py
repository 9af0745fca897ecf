"""``tend load-csv``: load a shop's CSV exports into the four shop tables.

For shops that cannot give Tend a database view, a nightly export of four files is enough:
``products.csv``, ``customers.csv``, ``orders.csv`` and ``order_lines.csv``, with the headers
in ``shop_schema.CSV_COLUMNS`` (any column order; ``customers.csv`` may add
``unsubscribed_at`` and ``orders.csv`` ``discount_code``). They load in that order so every
reference can be checked against rows already loaded, from this run or an earlier one.

Choices worth knowing:

* A file that cannot be used as a whole (missing, wrong header, not UTF-8) stops the load
  with a ``DataError`` before anything is written. The load is one transaction, so a load
  that fails half-way leaves the database as it was.
* A bad *row* never stops the load: it goes to the quarantine CSV (file, line, reason, row as
  JSON) with every reason it failed, so the shop can fix it and load again. The row rules are
  those of ``rules``, which the nightly reader applies too: a row it would set aside is
  quarantined here, with its reason followed by what was found.
* Some problems are only warnings, and the row is loaded: an invalid email (losing a
  customer's order history over a typo would hurt every later signal; delivery refuses the
  address anyway), a timestamp without a zone (read as UTC, which is how Tend stores time), an
  order total that differs from its lines (the shop's total is what the customer paid), and
  blanks that have a safe default (timezone UTC, locale en, consent none).
* Re-running is an upsert: a row whose key is already in the database is compared with the
  file and updated only if it changed (the export is the shop's truth, and consent or an
  unsubscribe must never be stuck at an old value); nothing is duplicated. ``order_lines``
  has no key in the schema, so ``(order_id, sku)`` is used: an order listing one sku twice
  must sum the quantities in its export (the second line is quarantined as a duplicate).
  Rows absent from a later export are left alone: an export is not a deletion.
* Files are streamed with the csv module and written in chunks; only the keys seen so far
  are kept in memory, to catch duplicates and to check order totals at the end.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import pandas as pd
from sqlalchemy import Connection, Table, and_, bindparam, func, select, update
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from tend.config import mask_url
from tend.errors import DataError
from tend.shop import rules
from tend.shop import schema as shop_schema
from tend.shop.screen import future_cutoff
from tend.store.db import connect

#: Files in load order: every reference points to a file loaded before it.
LOAD_ORDER: tuple[str, ...] = ("products", "customers", "orders", "order_lines")
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {"customers": ("unsubscribed_at",),
                                                "orders": ("discount_code",)}
QUARANTINE_HEADER = ("file", "line", "reason", "row")

_CHUNK = 900  # rows per batch; also keys per IN (...), under SQLite's bound-parameter limit
_EXAMPLES = 5  # line numbers kept per warning, to point at without flooding the report


@dataclass
class LoadReport:
    loaded: dict[str, int]  # table -> rows inserted
    quarantined: dict[str, int]  # table -> rows rejected
    quarantine_file: Path | None  # where rejected rows went (None if none)
    updated: dict[str, int] = field(default_factory=dict)  # table -> existing rows changed
    unchanged: dict[str, int] = field(default_factory=dict)  # table -> rows already loaded
    warnings: dict[str, int] = field(default_factory=dict)  # "file: problem" -> rows
    warning_lines: dict[str, list[int]] = field(default_factory=dict)  # first few lines

    def lines(self) -> list[str]:
        """One line per table, then warnings with example lines, then where rejects went."""
        out = [
            f"{table:<12} {self.loaded.get(table, 0):>10,} new {self.updated.get(table, 0):>8,}"
            f" updated {self.unchanged.get(table, 0):>10,} unchanged"
            f" {self.quarantined.get(table, 0):>8,} quarantined"
            for table in LOAD_ORDER
        ]
        for what, count in self.warnings.items():
            examples = ", ".join(str(n) for n in self.warning_lines.get(what, []))
            more = ", …" if count > len(self.warning_lines.get(what, [])) else ""
            out.append(f"warning: {what}: {count:,} row(s) loaded anyway (line {examples}{more})")
        if self.quarantine_file is not None:
            out.append(f"quarantined rows written to {self.quarantine_file}: fix them there "
                       "or in the export, then load again")
        return out


# --- parsing one field (the rules are ``rules``') -----------------------------------------


class _Row:
    """One CSV record being validated: parsed values, problems (reject) and warnings (keep)."""

    __slots__ = ("line", "problems", "raw", "values", "warnings")

    def __init__(self, line: int, raw: dict[str, str]) -> None:
        self.line = line
        self.raw = raw
        self.values: dict[str, Any] = {}
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def text(self, column: str) -> str:
        return self.raw[column].strip()

    def key(self, column: str, table: Table, empty: str, reference: str | None = None) -> None:
        value = self.text(column)
        if not value:
            self.problems.append(empty)
        self.string(column, table, value, reference)

    def string(self, column: str, table: Table, value: str | None = None,
               reference: str | None = None) -> None:
        """A text value; one that cannot be stored is a problem (for a reference, one that
        cannot name a row: the ``reference`` reason, as the reader gives it)."""
        value = self.text(column) if value is None else value
        problem = rules.text_problem(table.name, column, value)
        if problem:
            self.problems.append(rules.detailed(reference, problem) if reference else problem)
        self.values[column] = value

    def optional_string(self, column: str, table: Table) -> None:
        self.string(column, table)
        if not self.values[column]:
            self.values[column] = None

    def defaulted(self, column: str, value: str) -> str:
        """The value, or the rule's default for a blank one (with its warning)."""
        if value:
            return value
        default, warning = rules.CUSTOMER_DEFAULTS[column]
        self.warnings.append(warning)
        return default

    def timestamp(self, rule: rules.Timestamp) -> None:
        value, problem, warning = rule.parse(self.text(rule.column))
        self.values[rule.column] = value
        if problem:
            self.problems.append(problem)
        if warning:
            self.warnings.append(warning)

    def number(self, rule: rules.Number) -> None:
        value, problem = rule.parse(self.text(rule.column))
        self.values[rule.column] = value
        if problem:
            self.problems.append(problem)


# --- validating one row per file -----------------------------------------------------------


def _product(row: _Row) -> None:
    t = shop_schema.products
    row.key("sku", t, rules.PRODUCT_WITHOUT_SKU)
    row.string("name", t)
    if not row.values["name"]:
        row.problems.append(rules.PRODUCT_WITHOUT_NAME)
    row.string("category", t)
    if not row.values["category"]:
        row.warnings.append(f"missing category, stored as {rules.DEFAULT_CATEGORY!r}")
        row.values["category"] = rules.DEFAULT_CATEGORY
    row.number(rules.PRICE)
    row.number(rules.SERVICE_INTERVAL_DAYS)
    row.number(rules.REPLENISH_DAYS)
    row.string("complements", t, " ".join(row.text("complements").split()))
    row.values["complements"] = row.values["complements"] or None


def _customer(row: _Row) -> None:
    t = shop_schema.customers
    row.key("customer_id", t, rules.CUSTOMER_WITHOUT_ID)
    row.string("email", t)
    if not rules.EMAIL.match(row.values["email"]):
        row.warnings.append(rules.INVALID_EMAIL)
    row.optional_string("first_name", t)
    row.optional_string("last_name", t)
    locale = row.defaulted("locale", row.text("locale"))
    if not rules.LOCALE.match(locale):
        row.problems.append(rules.INVALID_LOCALE.format(value=locale))
    row.string("locale", t, locale)
    tz = row.defaulted("timezone", row.text("timezone"))
    if not rules.is_timezone(tz):
        row.problems.append(rules.UNKNOWN_TIMEZONE.format(value=tz))
    row.string("timezone", t, tz)
    consent = row.defaulted("marketing_consent", row.text("marketing_consent").lower())
    if consent not in shop_schema.CONSENT_VALUES:
        row.problems.append(rules.UNKNOWN_CONSENT.format(value=row.text("marketing_consent")))
    row.values["marketing_consent"] = consent
    row.timestamp(rules.CONSENT_AT)
    row.timestamp(rules.CREATED_AT)
    if "unsubscribed_at" in row.raw:
        row.timestamp(rules.UNSUBSCRIBED_AT)


def _order(row: _Row) -> None:
    t = shop_schema.orders
    row.key("order_id", t, rules.ORDER_WITHOUT_ID)
    row.key("customer_id", t, rules.ORDER_WITHOUT_CUSTOMER, rules.ORDER_UNKNOWN_CUSTOMER)
    row.timestamp(rules.ORDERED_AT)
    row.number(rules.TOTAL)
    currency = row.text("currency").upper()
    if not rules.CURRENCY.match(currency):
        row.problems.append(rules.INVALID_CURRENCY.format(value=row.text("currency")))
    row.values["currency"] = currency
    if shop_schema.DISCOUNT_CODE in row.raw:
        code = row.text(shop_schema.DISCOUNT_CODE)
        if len(code) > shop_schema.DISCOUNT_CODE_LENGTH:
            row.problems.append(f"discount_code longer than {shop_schema.DISCOUNT_CODE_LENGTH} "
                                "characters")
        row.values[shop_schema.DISCOUNT_CODE] = code or None


def _order_line(row: _Row) -> None:
    t = shop_schema.order_lines
    row.key("order_id", t, rules.detailed(rules.LINE_UNKNOWN_ORDER, "empty order_id"),
            rules.LINE_UNKNOWN_ORDER)
    row.key("sku", t, rules.detailed(rules.LINE_UNKNOWN_SKU, "empty sku"), rules.LINE_UNKNOWN_SKU)
    row.number(rules.QUANTITY)
    row.number(rules.UNIT_PRICE)


@dataclass(frozen=True)
class _Spec:
    table: Table
    key: tuple[str, ...]
    validate: Callable[[_Row], None]
    # (column, referenced table, the reason when the reference is unknown)
    references: tuple[tuple[str, Table, str], ...] = ()


_SPECS: dict[str, _Spec] = {
    "products": _Spec(shop_schema.products, ("sku",), _product),
    "customers": _Spec(shop_schema.customers, ("customer_id",), _customer),
    "orders": _Spec(
        shop_schema.orders, ("order_id",), _order,
        (("customer_id", shop_schema.customers, rules.ORDER_UNKNOWN_CUSTOMER),),
    ),
    "order_lines": _Spec(
        shop_schema.order_lines, ("order_id", "sku"), _order_line,
        (("order_id", shop_schema.orders, rules.LINE_UNKNOWN_ORDER),
         ("sku", shop_schema.products, rules.LINE_UNKNOWN_SKU)),
    ),
}


# --- the load ------------------------------------------------------------------------------


class _Quarantine:
    """The reject file, opened on the first reject so a clean load leaves no empty file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fh: IO[str] | None = None
        self._writer: Any = None

    def add(self, file: str, line: int, reason: str, row: object) -> None:
        if self._writer is None:
            self._fh = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._fh)
            self._writer.writerow(QUARANTINE_HEADER)
        self._writer.writerow([file, line, reason, json.dumps(row, ensure_ascii=False)])

    @property
    def used(self) -> bool:
        return self._writer is not None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()

    def remove_stale(self) -> None:
        """Delete a quarantine file from an earlier load that this clean load made obsolete."""
        try:
            with self.path.open(encoding="utf-8") as fh:
                first = fh.readline().strip()
        except OSError:
            return
        if first == ",".join(QUARANTINE_HEADER):
            self.path.unlink()


def _read_header(name: str, path: Path) -> list[str]:
    """The header of ``path``, or a DataError that says how to fix it."""
    expected = shop_schema.CSV_COLUMNS[name]
    optional = OPTIONAL_COLUMNS.get(name, ())
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            header = next(csv.reader(fh), None)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path.name}: not UTF-8 text ({exc.reason}): export it as UTF-8") from exc
    except OSError as exc:
        raise DataError(f"{path.name}: cannot read it ({exc.strerror})") from exc
    wanted = ",".join(expected) + "".join(f"[,{c}]" for c in optional)
    if not header:
        raise DataError(f"{path.name}: the file is empty; expected a header row {wanted} "
                        "(a file with only the header row is fine when there is no data)")
    found = [h.strip() for h in header]
    missing = [c for c in expected if c not in found]
    unexpected = [c for c in found if c not in expected and c not in optional]
    repeated = sorted({c for c in found if found.count(c) > 1})
    if missing or unexpected or repeated:
        details = "; ".join(
            part for part in (
                f"missing {', '.join(missing)}" if missing else "",
                f"unexpected {', '.join(unexpected)}" if unexpected else "",
                f"repeated {', '.join(repeated)}" if repeated else "",
            ) if part
        )
        raise DataError(
            f"{path.name}: expected columns {wanted} ; found {','.join(found)} — {details}: "
            "rename the header row (the first line) to match; column order does not matter"
        )
    return found


def _records(path: Path) -> Iterator[tuple[int, list[str]]]:
    """(first line of the record, fields) for each non-blank record after the header."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        previous = 0
        try:
            next(reader, None)  # the header, checked by _read_header
            previous = reader.line_num
            for fields in reader:
                line, previous = previous + 1, reader.line_num
                if any(f.strip() for f in fields):
                    yield line, fields
        except UnicodeDecodeError as exc:
            raise DataError(f"{path.name}: not UTF-8 text after line {previous} "
                            f"({exc.reason}): export it as UTF-8") from exc
        except csv.Error as exc:
            raise DataError(f"{path.name}: line {previous + 1} is not valid CSV ({exc}): "
                            "fix the quoting there") from exc


def _db_value(value: Any) -> Any:
    """A value as comparable whatever the database returned (naive UTC text, float money)."""
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, float):
        return Decimal(repr(value))
    return value


class _Loader:
    def __init__(self, conn: Connection, directory: Path, quarantine: _Quarantine,
                 now: datetime | None = None) -> None:
        self.conn = conn
        self.directory = directory
        self.quarantine = quarantine
        future = future_cutoff(now)
        self.future = future.to_pydatetime()
        self.future_reason = rules.ORDER_IN_FUTURE.format(
            date=(future - pd.Timedelta(days=1)).date())
        self.report = LoadReport(loaded={}, quarantined={}, quarantine_file=None)
        self.seen: dict[str, dict[Any, int]] = {}  # table -> key -> line where it was loaded

    def reject(self, name: str, line: int, reasons: list[str], raw: object) -> None:
        self.quarantine.add(f"{name}.csv", line, "; ".join(reasons), raw)
        self.report.quarantined[name] = self.report.quarantined.get(name, 0) + 1

    def warn(self, name: str, line: int, what: str) -> None:
        key = f"{name}.csv: {what}"
        self.report.warnings[key] = self.report.warnings.get(key, 0) + 1
        lines = self.report.warning_lines.setdefault(key, [])
        if len(lines) < _EXAMPLES:
            lines.append(line)

    def load_file(self, name: str, header: list[str]) -> None:
        spec = _SPECS[name]
        if name == "orders" and shop_schema.DISCOUNT_CODE in header:
            # the optional column: added to the table when missing, written through the wider
            # description of it
            shop_schema.add_discount_code(self.conn)
            spec = replace(spec, table=shop_schema.orders_with_codes)
        for counter in (self.report.loaded, self.report.updated, self.report.unchanged,
                        self.report.quarantined):
            counter[name] = 0
        self.seen[name] = {}
        batch: list[_Row] = []
        for line, fields in _records(self.directory / f"{name}.csv"):
            if len(fields) != len(header):
                raw: dict[str, Any] = dict(zip(header, fields, strict=False))
                if len(fields) > len(header):
                    raw["_extra"] = fields[len(header):]
                self.reject(name, line, [
                    f"expected {len(header)} fields, found {len(fields)} "
                    "(an unquoted comma or a missing one?)"], raw)
                continue
            row = _Row(line, dict(zip(header, fields, strict=True)))
            spec.validate(row)
            ordered_at = row.values.get("ordered_at") if name == "orders" else None
            if ordered_at is not None and ordered_at >= self.future:
                row.problems.append(rules.detailed(self.future_reason, repr(row.text(
                    "ordered_at"))))
            if row.problems:
                self.reject(name, line, row.problems, row.raw)
                continue
            batch.append(row)
            if len(batch) >= _CHUNK:
                self._flush(name, spec, batch)
                batch = []
        self._flush(name, spec, batch)

    def _flush(self, name: str, spec: _Spec, batch: list[_Row]) -> None:
        """Check references and duplicates, then insert new rows and update changed ones."""
        if not batch:
            return
        for column, target, reason in spec.references:
            wanted = {row.values[column] for row in batch}
            ref = target.c[column]
            known = {r[0] for r in self.conn.execute(select(ref).where(ref.in_(wanted)))}
            for row in batch:
                if row.values[column] not in known:
                    row.problems.append(rules.detailed(reason, (
                        f"{row.values[column]!r} not in {target.name}.csv or the database "
                        "(if it was quarantined, fix it first)")))
        seen = self.seen[name]
        keep: list[_Row] = []
        for row in batch:
            key = tuple(row.values[k] for k in spec.key)
            if not row.problems and key in seen:
                label = ", ".join(spec.key)
                shown = key[0] if len(key) == 1 else key
                row.problems.append(f"duplicate {label} {shown!r} (first at line {seen[key]})")
            if row.problems:
                self.reject(name, row.line, row.problems, row.raw)
                continue
            seen[key] = row.line
            for what in dict.fromkeys(row.warnings):
                self.warn(name, row.line, what)
            keep.append(row)
        self._write(name, spec, keep)

    def _write(self, name: str, spec: _Spec, rows: list[_Row]) -> None:
        table = spec.table
        columns = list(rows[0].values) if rows else []
        lookup = table.c[spec.key[0]]
        existing: dict[tuple[Any, ...], tuple[Any, ...]] = {}
        if rows:
            query = select(*(table.c[k] for k in spec.key), *(table.c[c] for c in columns))
            wanted = {row.values[spec.key[0]] for row in rows}
            for r in self.conn.execute(query.where(lookup.in_(wanted))):
                existing[tuple(r[: len(spec.key)])] = tuple(
                    _db_value(v) for v in r[len(spec.key):]
                )
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        for row in rows:
            key = tuple(row.values[k] for k in spec.key)
            before = existing.get(key)
            if before is None:
                inserts.append(row.values)
            elif before != tuple(row.values[c] for c in columns):
                updates.append({**{f"k_{k}": row.values[k] for k in spec.key},
                                **{f"v_{c}": row.values[c] for c in columns}})
            else:
                self.report.unchanged[name] += 1
        first, last = (rows[0].line, rows[-1].line) if rows else (0, 0)
        try:
            if inserts:
                self.conn.execute(table.insert(), inserts)
            if updates:
                stmt = (
                    update(table)
                    .where(and_(*(table.c[k] == bindparam(f"k_{k}") for k in spec.key)))
                    .values({c: bindparam(f"v_{c}") for c in columns})
                )
                self.conn.execute(stmt, updates)
        except SQLAlchemyError as exc:
            raise DataError(
                f"{name}.csv: the database refused rows from lines {first}–{last} "
                f"({exc.__class__.__name__}: {str(exc).splitlines()[0]}); nothing was loaded, "
                "fix those rows and load again"
            ) from exc
        self.report.loaded[name] += len(inserts)
        self.report.updated[name] += len(updates)

    def check_totals(self) -> None:
        """Warn (never reject) about orders whose total is not the sum of their lines."""
        o, ln = shop_schema.orders, shop_schema.order_lines
        lines_sum = func.coalesce(func.sum(ln.c.quantity * ln.c.unit_price), 0)
        base = (
            select(o.c.order_id, o.c.total, lines_sum)
            .select_from(o.outerjoin(ln, ln.c.order_id == o.c.order_id))
            .group_by(o.c.order_id, o.c.total)
        )
        orders = self.seen.get("orders", {})
        ids = [k[0] for k in orders]
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            for order_id, total, summed in self.conn.execute(base.where(o.c.order_id.in_(chunk))):
                if abs(Decimal(str(total)) - Decimal(str(summed))) > Decimal("0.005"):
                    self.warn("orders", orders[(order_id,)],
                              "order total differs from the sum of its lines")


def load_csv_dir(
    url: str, directory: Path, *, quarantine_file: Path | None = None, strict: bool = False,
    now: datetime | None = None,
) -> LoadReport:
    """Load the four shop CSV files in ``directory`` into the database at ``url``.

    Every header is checked before the database is touched, then the files load in
    ``LOAD_ORDER`` inside one transaction. Rejected rows go to ``quarantine_file`` (default
    ``<directory>/quarantine.csv``); a stale quarantine file from an earlier load is removed
    when this load rejects nothing, so the file on disk always matches the latest report.
    ``strict``: one rejected row refuses the whole load (a DataError; nothing is written but
    the quarantine file). ``now``: the wall clock an order may not be after (tests).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory} is not a directory: pass the folder that holds "
                        f"{', '.join(f'{n}.csv' for n in LOAD_ORDER)}")
    headers: dict[str, list[str]] = {}
    for name in LOAD_ORDER:
        path = directory / f"{name}.csv"
        if not path.is_file():
            raise DataError(
                f"{name}.csv not found in {directory}: tend load-csv needs "
                f"{', '.join(f'{n}.csv' for n in LOAD_ORDER)} (a file with only its header "
                f"row is fine when there is no data); the {name}.csv header is "
                f"{','.join(shop_schema.CSV_COLUMNS[name])}"
            )
        headers[name] = _read_header(name, path)

    try:
        engine = connect(url)
        shop_schema.metadata.create_all(engine)
    except ArgumentError as exc:
        raise DataError(f"cannot use database URL {mask_url(url)!r} ({exc}): use e.g. "
                        "sqlite:///var/shop.db or postgresql://user@host/dbname") from exc
    except SQLAlchemyError as exc:
        raise DataError(
            f"cannot open the shop database {mask_url(url)}: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]} — check that it is running and the URL is right"
        ) from exc

    quarantine = _Quarantine(Path(quarantine_file or directory / "quarantine.csv"))
    try:
        with engine.begin() as conn:
            loader = _Loader(conn, directory, quarantine, now)
            for name in LOAD_ORDER:
                loader.load_file(name, headers[name])
            loader.check_totals()
            rejected = sum(loader.report.quarantined.values())
            if strict and rejected:
                raise DataError(
                    f"--strict: {rejected:,} row(s) fail the row rules (see {quarantine.path}); "
                    "nothing was loaded: fix them in the export, or load without --strict to "
                    "load the good rows and quarantine the others")
    except SQLAlchemyError as exc:
        raise DataError(
            f"the shop database {mask_url(url)} refused the load ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0]}); nothing was loaded: check the database, then load "
            "again") from exc
    except OSError as exc:
        raise DataError(f"cannot write the quarantine file {quarantine.path} ({exc.strerror}): "
                        "pass --quarantine with a writable path") from exc
    finally:
        quarantine.close()
    report = loader.report
    if quarantine.used:
        report.quarantine_file = quarantine.path
    else:
        quarantine.remove_stale()
    return report
