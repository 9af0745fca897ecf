"""The program registry: a reviewed YAML file that says which signal triggers which message.

Loaded and validated once per run; every problem is reported with the program's name and what
to write instead, because the people editing programs.yaml are not always engineers.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tend import config
from tend.errors import ConfigError
from tend.programs.caps import SendWindow, parse_clock
from tend.store.tables import MESSAGE_KINDS

DEFAULT_REGISTRY = Path(__file__).with_name("programs.yaml")
KINDS = MESSAGE_KINDS  # the kinds the ledger records, defined once beside its tables
#: Behavioural signals (tend.signals) plus "newsletter", which fires on a calendar schedule.
KNOWN_SIGNALS = (
    "lapsed", "seasonal", "replenish", "checkup", "first_purchase", "survey",
    "loyalty_nth_order", "loyalty_tier", "anniversary", "cross_sell", "newsletter",
)
#: Default attribution windows (``Program.window_days``).
DEFAULT_ATTRIBUTION_DAYS = 7
LONG_ATTRIBUTION_DAYS = 30
LONG_WINDOW_SIGNALS = frozenset({"checkup", "replenish"})
MAX_ATTRIBUTION_DAYS = 365
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


@dataclass(frozen=True)
class Offer:
    kind: str
    amount: float
    valid_days: int
    code_prefix: str


@dataclass(frozen=True)
class Schedule:
    """When a calendar program (the newsletter) fires: a day of the month or of the week."""

    monthly_on_day: int | None = None
    weekly_on: str | None = None

    def fires_on(self, day: dt.date) -> bool:
        if self.monthly_on_day is not None:
            return day.day == self.monthly_on_day
        return self.weekly_on is not None and WEEKDAYS[day.weekday()] == self.weekly_on

    def period(self, day: dt.date) -> str:
        """The occurrence key: one newsletter per month (or ISO week) per customer."""
        if self.monthly_on_day is not None:
            return f"{day:%Y-%m}"
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"


@dataclass(frozen=True)
class Program:
    name: str
    signals: tuple[str, ...]
    template: str
    kind: str
    priority: int
    cooldown_days: int
    validity_days: int
    holdout_share: float = 0.0
    enabled: bool = True
    description: str = ""
    offer: Offer | None = None
    schedule: Schedule | None = None
    #: Days after a contact in which an order counts as its response (tend.results); None:
    #: the default for the program's signals (``window_days``).
    attribution_days: int | None = None

    @property
    def signal(self) -> str:
        return self.signals[0]

    @property
    def window_days(self) -> int:
        """The attribution window: ``attribution_days``, else 30 days for check-ups and
        replenishment (their purchase is planned weeks ahead) and 7 for everything else
        (an offer or a win-back works within the week, or not at all)."""
        if self.attribution_days is not None:
            return self.attribution_days
        return LONG_ATTRIBUTION_DAYS if set(self.signals) & LONG_WINDOW_SIGNALS \
            else DEFAULT_ATTRIBUTION_DAYS


@dataclass(frozen=True)
class Cap:
    messages: int
    days: int

    @property
    def label(self) -> str:
        return f"capped:{self.days}d"


@dataclass(frozen=True)
class Registry:
    programs: tuple[Program, ...]
    caps: tuple[Cap, ...] = field(default_factory=tuple)
    send_window: SendWindow = field(default_factory=SendWindow)

    def enabled(self) -> list[Program]:
        return [p for p in self.programs if p.enabled]

    def get(self, name: str) -> Program:
        for p in self.programs:
            if p.name == name:
                return p
        raise ConfigError(
            f"no program named {name!r}; known programs: {', '.join(p.name for p in self.programs)}"
        )


def registry_path() -> Path:
    return config.programs_file() or DEFAULT_REGISTRY


def load_registry(path: Path | None = None) -> Registry:
    path = path or registry_path()
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"program registry {path} not found; set TEND_PROGRAMS_FILE") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    return parse_registry(raw, source=str(path))


def parse_registry(raw: Any, *, source: str = "programs.yaml") -> Registry:
    if not isinstance(raw, dict) or not isinstance(raw.get("programs"), list):
        raise ConfigError(f"{source}: expected a mapping with a 'programs:' list")
    unknown = sorted(set(raw) - {"caps", "programs", "send_window"})
    if unknown:
        raise ConfigError(f"{source}: unknown top-level keys {', '.join(unknown)}; "
                          "allowed: caps, programs, send_window")
    caps = tuple(_cap(c, source, i) for i, c in enumerate(raw.get("caps") or []))
    window = _window(raw.get("send_window"), source)
    programs = tuple(_program(p, source, i) for i, p in enumerate(raw["programs"]))
    names = [p.name for p in programs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{source}: program names must be unique; repeated: {', '.join(dupes)}")
    return Registry(programs=programs, caps=caps, send_window=window)


def _window(raw: Any, source: str) -> SendWindow:
    if raw is None:
        return SendWindow()
    if not isinstance(raw, dict) or set(raw) != {"start", "end"}:
        raise ConfigError(f'{source}: write send_window as {{start: "09:00", end: "20:00"}}')
    start = parse_clock(str(raw["start"]), f"{source}: send_window.start")
    end = parse_clock(str(raw["end"]), f"{source}: send_window.end")
    if not start < end:
        raise ConfigError(f"{source}: send_window.start must be before send_window.end")
    return SendWindow(start=start, end=end)


def _cap(raw: Any, source: str, i: int) -> Cap:
    where = f"{source}: caps[{i}]"
    if not isinstance(raw, dict) or set(raw) != {"messages", "days"}:
        raise ConfigError(f"{where}: write caps as {{messages: N, days: D}}")
    messages, days = raw["messages"], raw["days"]
    if not (isinstance(messages, int) and messages >= 1 and isinstance(days, int) and days >= 1):
        raise ConfigError(f"{where}: messages and days must be whole numbers >= 1")
    return Cap(messages=messages, days=days)


_REQUIRED = ("name", "signal", "template", "kind", "priority", "cooldown_days", "validity_days")
_ALLOWED = {*_REQUIRED, "holdout_share", "enabled", "description", "offer", "schedule",
            "attribution_days"}


def _program(raw: Any, source: str, i: int) -> Program:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: programs[{i}] must be a mapping")
    name = raw.get("name", f"programs[{i}]")
    where = f"{source}: program {name!r}"
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ConfigError(f"{where} is missing {', '.join(missing)}")
    unknown = sorted(set(raw) - _ALLOWED)
    if unknown:
        raise ConfigError(
            f"{where} has unknown keys {', '.join(unknown)}; allowed: {', '.join(sorted(_ALLOWED))}"
        )
    if raw["kind"] not in KINDS:
        raise ConfigError(f"{where}: kind {raw['kind']!r} must be one of {', '.join(KINDS)}")
    signals = raw["signal"] if isinstance(raw["signal"], list) else [raw["signal"]]
    bad = [sig for sig in signals if sig not in KNOWN_SIGNALS]
    if not signals or bad:
        raise ConfigError(
            f"{where}: signal {', '.join(map(repr, bad)) or '[]'} is not known; "
            f"known: {', '.join(KNOWN_SIGNALS)}"
        )
    schedule = _schedule(raw.get("schedule"), where)
    if ("newsletter" in signals) != (schedule is not None):
        raise ConfigError(f"{where}: the newsletter signal needs a schedule "
                          "(schedule: {monthly_on_day: 1} or {weekly_on: tuesday}), and only it")
    for key in ("priority", "cooldown_days", "validity_days"):
        if not isinstance(raw[key], int) or raw[key] < 0:
            raise ConfigError(f"{where}: {key} must be a whole number >= 0")
    share = raw.get("holdout_share", 0.0)
    if not isinstance(share, int | float) or not 0 <= share < 1:
        raise ConfigError(f"{where}: holdout_share must be a number in [0, 1)")
    offer = _offer(raw["offer"], where) if raw.get("offer") is not None else None
    window = raw.get("attribution_days")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int)
                               or not 1 <= window <= MAX_ATTRIBUTION_DAYS):
        raise ConfigError(f"{where}: attribution_days must be a whole number of days from 1 to "
                          f"{MAX_ATTRIBUTION_DAYS} (or left out for the default: "
                          f"{LONG_ATTRIBUTION_DAYS} for check-ups and replenishment, "
                          f"{DEFAULT_ATTRIBUTION_DAYS} otherwise)")
    return Program(
        name=str(raw["name"]),
        signals=tuple(signals),
        template=str(raw["template"]),
        kind=raw["kind"],
        priority=raw["priority"],
        cooldown_days=raw["cooldown_days"],
        validity_days=raw["validity_days"],
        holdout_share=float(share),
        enabled=bool(raw.get("enabled", True)),
        description=str(raw.get("description", "")),
        offer=offer,
        schedule=schedule,
        attribution_days=window,
    )


def _schedule(raw: Any, where: str) -> Schedule | None:
    if raw is None:
        return None
    if isinstance(raw, dict) and set(raw) == {"monthly_on_day"}:
        day = raw["monthly_on_day"]
        if isinstance(day, int) and 1 <= day <= 28:
            return Schedule(monthly_on_day=day)
    if isinstance(raw, dict) and set(raw) == {"weekly_on"} and raw["weekly_on"] in WEEKDAYS:
        return Schedule(weekly_on=raw["weekly_on"])
    raise ConfigError(f"{where}: schedule must be {{monthly_on_day: 1..28}} or "
                      f"{{weekly_on: {'|'.join(WEEKDAYS)}}}")


def _offer(raw: Any, where: str) -> Offer:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: offer must be a mapping (kind, amount, valid_days)")
    kind = raw.get("kind")
    if kind not in ("amount", "percent"):
        raise ConfigError(f"{where}: offer.kind must be 'amount' or 'percent'")
    amount = raw.get("amount")
    if not isinstance(amount, int | float) or amount <= 0 or (kind == "percent" and amount >= 100):
        raise ConfigError(f"{where}: offer.amount must be > 0 (and < 100 for percent)")
    valid_days = raw.get("valid_days", 30)
    if not isinstance(valid_days, int) or valid_days < 1:
        raise ConfigError(f"{where}: offer.valid_days must be a whole number >= 1")
    return Offer(kind=kind, amount=float(amount), valid_days=valid_days,
                 code_prefix=str(raw.get("code_prefix", "TEND")))
