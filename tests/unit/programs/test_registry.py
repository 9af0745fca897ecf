"""The program registry is validated on load, with errors that say what to write instead."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from tend.errors import ConfigError
from tend.programs.registry import DEFAULT_REGISTRY, load_registry, parse_registry

BASE: dict[str, Any] = yaml.safe_load(DEFAULT_REGISTRY.read_text())


def test_the_shipped_registry_is_valid() -> None:
    reg = load_registry(DEFAULT_REGISTRY)
    assert "winback" in [p.name for p in reg.enabled()]
    assert len(reg.programs) == 9
    assert reg.get("newsletter").schedule is not None
    assert [(c.messages, c.days) for c in reg.caps] == [(1, 3), (2, 7), (4, 30)]
    winback = reg.get("winback")
    assert winback.offer is not None and winback.offer.amount == 10


def mutate(path: str, value: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    target: Any = raw
    *parents, last = path.split(".")
    for key in parents:
        target = target[int(key)] if key.isdigit() else target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return raw


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        ("programs.0.kind", "promo", "kind 'promo' must be one of marketing, service"),
        ("programs.0.signal", "birthday", "signal 'birthday' is not known"),
        ("programs.0.priority", -1, "priority must be a whole number"),
        ("programs.0.holdout_share", 1.5, "holdout_share must be a number in [0, 1)"),
        ("programs.0.template", _DELETE, "is missing template"),
        ("programs.0.colour", "green", "unknown keys colour"),
        ("programs.0.offer", {"kind": "gift"}, "offer.kind must be 'amount' or 'percent'"),
        ("programs.0.offer", {"kind": "percent", "amount": 150}, "offer.amount must be > 0"),
        ("caps", [{"messages": 0, "days": 3}], "whole numbers >= 1"),
        ("caps", [{"per": 3}], "write caps as {messages: N, days: D}"),
    ],
)
def test_invalid_registries_name_the_program_and_the_fix(path: str, value: Any,
                                                         message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_registry(mutate(path, value))
    assert message in str(err.value)


def test_duplicate_names_are_refused() -> None:
    raw = copy.deepcopy(BASE)
    raw["programs"].append(copy.deepcopy(raw["programs"][0]))
    with pytest.raises(ConfigError, match="repeated: thank_you"):
        parse_registry(raw)


def test_broken_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "programs.yaml"
    bad.write_text("programs: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_registry(bad)
    with pytest.raises(ConfigError, match="TEND_PROGRAMS_FILE"):
        load_registry(tmp_path / "nope.yaml")


def test_unknown_program_lookup_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known programs: thank_you, checkup"):
        load_registry().get("birthday")


def test_attribution_windows_default_by_signal() -> None:
    reg = load_registry(DEFAULT_REGISTRY)
    windows = {p.name: p.window_days for p in reg.programs}
    assert windows["winback"] == windows["loyalty"] == windows["cross_sell"] == 7
    assert windows["checkup"] == windows["replenish"] == 30


def test_attribution_days_overrides_the_default() -> None:
    reg = parse_registry(mutate("programs.4.attribution_days", 14))
    assert reg.programs[4].name == "winback"
    assert reg.get("winback").window_days == 14


@pytest.mark.parametrize("value", [0, 400, 2.5, "7", True])
def test_attribution_days_must_be_whole_days(value: Any) -> None:
    with pytest.raises(ConfigError) as err:
        parse_registry(mutate("programs.4.attribution_days", value))
    assert "program 'winback': attribution_days must be a whole number of days" in str(err.value)
