"""The program registry: a reviewed YAML file that says which signal triggers which message.

Loaded and validated once per run; every problem is reported with the program's name and what
to write instead, because the people editing programs.yaml are not always engineers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tend.errors import ConfigError

DEFAULT_REGISTRY = Path(__file__).with_name("programs.yaml")
KINDS = ("marketing", "service", "transactional")
KNOWN_SIGNALS = ("lapsed",)


@dataclass(frozen=True)
class Offer:
    kind: str
    amount: float
    valid_days: int
    code_prefix: str


@dataclass(frozen=True)
class Program:
    name: str
    signal: str
    template: str
    kind: str
    priority: int
    cooldown_days: int
    validity_days: int
    holdout_share: float = 0.0
    enabled: bool = True
    description: str = ""
    offer: Offer | None = None


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
    return Path(os.environ.get("TEND_PROGRAMS_FILE", DEFAULT_REGISTRY))


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
    caps = tuple(_cap(c, source, i) for i, c in enumerate(raw.get("caps") or []))
    programs = tuple(_program(p, source, i) for i, p in enumerate(raw["programs"]))
    names = [p.name for p in programs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"{source}: program names must be unique; repeated: {', '.join(dupes)}")
    return Registry(programs=programs, caps=caps)


def _cap(raw: Any, source: str, i: int) -> Cap:
    where = f"{source}: caps[{i}]"
    if not isinstance(raw, dict) or set(raw) != {"messages", "days"}:
        raise ConfigError(f"{where}: write caps as {{messages: N, days: D}}")
    messages, days = raw["messages"], raw["days"]
    if not (isinstance(messages, int) and messages >= 1 and isinstance(days, int) and days >= 1):
        raise ConfigError(f"{where}: messages and days must be whole numbers >= 1")
    return Cap(messages=messages, days=days)


_REQUIRED = ("name", "signal", "template", "kind", "priority", "cooldown_days", "validity_days")
_ALLOWED = {*_REQUIRED, "holdout_share", "enabled", "description", "offer"}


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
    if raw["signal"] not in KNOWN_SIGNALS:
        raise ConfigError(
            f"{where}: signal {raw['signal']!r} is not known; known: {', '.join(KNOWN_SIGNALS)}"
        )
    for key in ("priority", "cooldown_days", "validity_days"):
        if not isinstance(raw[key], int) or raw[key] < 0:
            raise ConfigError(f"{where}: {key} must be a whole number >= 0")
    share = raw.get("holdout_share", 0.0)
    if not isinstance(share, int | float) or not 0 <= share < 1:
        raise ConfigError(f"{where}: holdout_share must be a number in [0, 1)")
    offer = _offer(raw["offer"], where) if raw.get("offer") is not None else None
    return Program(
        name=str(raw["name"]),
        signal=raw["signal"],
        template=str(raw["template"]),
        kind=raw["kind"],
        priority=raw["priority"],
        cooldown_days=raw["cooldown_days"],
        validity_days=raw["validity_days"],
        holdout_share=float(share),
        enabled=bool(raw.get("enabled", True)),
        description=str(raw.get("description", "")),
        offer=offer,
    )


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
