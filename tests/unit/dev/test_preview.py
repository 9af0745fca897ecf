"""``tend templates check`` and ``tend preview``, driven as a user would (in-process)."""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path

import pytest
from _support import TEMPLATES

from tend.cli import main
from tend.dev.preview import find_chromium

NIGHT = "2026-11-20"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("TEND_VAR_DIR", str(tmp_path))
    for var in ("TEND_SHOP_URL", "TEND_STORE_URL", "TEND_TEMPLATES_DIR", "TEND_SHOP_NAME",
                "TEND_SHOP_ADDRESS", "TEND_DEFAULT_LOCALE"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('shop') / 'shop.db'}"
    assert main(["demo-data", "--db", url, "--customers", "60", "--seed", "11",
                 "--as-of", NIGHT]) == 0
    return url


def _first(url: str, where: str) -> tuple[str, str]:
    from sqlalchemy import create_engine, text

    with create_engine(url).connect() as conn:
        row = conn.execute(text(f"SELECT customer_id, first_name FROM customers WHERE {where} "
                                "ORDER BY customer_id LIMIT 1")).one()
    return str(row[0]), str(row[1])


# --- tend templates check -----------------------------------------------------------------------


def test_templates_check_passes_and_lists_every_template(
        env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templates", "check"]) == 0
    out = capsys.readouterr().out
    for name in ("winback", "seasonal", "replenish", "checkup", "thank_you", "survey",
                 "loyalty", "cross_sell", "newsletter"):
        assert f"\n{name} " in f"\n{out}"
    assert "9 template(s) OK in en, fr" in out


def test_templates_check_fails_with_exit_2_naming_template_and_variable(
        env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    broken = env / "email"
    shutil.copytree(TEMPLATES, broken)
    page = broken / "fr" / "replenish.html.j2"
    page.write_text(page.read_text().replace("{{ signal.due_on|date(locale) }}",
                                             "{{ signal.due_date|date(locale) }}"))
    monkeypatch.setenv("TEND_TEMPLATES_DIR", str(broken))
    assert main(["templates", "check"]) == 2
    captured = capsys.readouterr()
    assert "replenish      marketing     en fr    FAILED" in captured.out
    assert captured.err.startswith("tend: templates check failed: ")
    assert "fr/replenish.html.j2 line" in captured.err and "'due_date'" in captured.err
    assert len(captured.err.strip().splitlines()) == 1


def test_templates_check_one_template_and_locale(env: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["templates", "check", "--template", "survey", "--locale", "fr"]) == 0
    out = capsys.readouterr().out
    assert "survey         service       fr" in out and "winback" not in out


# --- tend preview ---------------------------------------------------------------------------------


def test_preview_for_a_real_customer_in_french(env: Path, shop_db: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    customer, first_name = _first(shop_db, "first_name IS NOT NULL AND first_name <> ''")
    out_dir = env / "previews"
    assert main(["preview", "winback", "--locale", "fr", "--customer", customer, "--db", shop_db,
                 "--as-of", NIGHT, "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    html = (out_dir / f"winback-fr-{customer}.html").read_text()
    text = (out_dir / f"winback-fr-{customer}.txt").read_text()
    assert f"Bonjour {first_name}," in text
    assert '<html lang="fr"' in html and "/unsubscribe/" in html
    assert "Valide jusqu'au 20 décembre 2026" in text  # as_of + the program's 30 days
    assert "WB-" in text  # the program's voucher prefix
    assert f"subject    {first_name}, un rabais de 10,00\xa0$ vous attend" in printed
    assert "png" not in printed


def test_preview_without_customer_uses_the_sample(env: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "checkup", "--locale", "en", "--out", str(env)]) == 0
    assert "Marie, your annual boiler service is due on March 12, 2027" in (
        env / "checkup-en-sample.txt").read_text()


def test_preview_of_an_unknown_customer_or_program_exits_2(
        env: Path, shop_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["preview", "winback", "--customer", "NOPE", "--db", shop_db]) == 2
    assert "no customer 'NOPE' in the shop database" in capsys.readouterr().err
    assert main(["preview", "winbak"]) == 2
    assert "no program or template named 'winbak'" in capsys.readouterr().err


def _chromium_or_skip() -> None:
    if find_chromium() is None:
        message = "headless Chromium is not installed (make install provides it)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"the PNG preview test must run in CI: {message}")
        pytest.skip(message)


@pytest.mark.chromium
@pytest.mark.timeout(240)
def test_png_preview_is_a_real_screenshot(env: Path, shop_db: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _chromium_or_skip()
    customer, _ = _first(shop_db, "locale LIKE 'fr%'")
    out_dir = env / "png"
    assert main(["preview", "loyalty", "--locale", "fr", "--customer", customer, "--db", shop_db,
                 "--as-of", NIGHT, "--out", str(out_dir), "--png"]) == 0
    png = out_dir / f"loyalty-fr-{customer}.png"
    assert f"png        {png}" in capsys.readouterr().out
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width == 640
    assert 500 < height < 4000  # the whole email, not a fixed window
    assert len(data) > 10_000   # not a blank page


def test_preview_of_a_customer_renders_what_they_were_sent(
        env: Path, shop_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    import datetime as dt
    import json

    from _support import make_program, make_registry, night_decisions, plan_test_night

    from tend.store import ledger, migrate
    from tend.store.db import connect

    store = f"sqlite:///{env / 'store.db'}"
    migrate(store)
    plan_test_night(shop_db, store, dt.date.fromisoformat(NIGHT),
                    make_registry(make_program("winback", offer={"kind": "percent",
                                                                 "amount": 15,
                                                                 "code_prefix": "WB",
                                                                 "valid_days": 30})))
    decided = night_decisions(store)
    row = decided.loc[decided["fate"] == "claimed"].iloc[0]
    with connect(store).connect() as conn:
        ctx = json.loads(ledger.contexts_of(conn, [row["message_id"]])[row["message_id"]])
    out_dir = env / "previews"
    assert main(["preview", "winback", "--customer", row["customer_id"], "--db", shop_db,
                 "--store", store, "--as-of", NIGHT, "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"content    message {row['message_id']} of night {NIGHT} (sent)" in printed
    text = next(out_dir.glob(f"winback-*-{row['customer_id']}.txt")).read_text()
    assert ctx["offer"]["code"] in text  # the customer's own voucher, not a preview's
    # a customer the program never chose: the sample content, and the preview says so
    other = decided.loc[decided["fate"] != "claimed", "customer_id"].iloc[0]
    assert main(["preview", "winback", "--customer", other, "--db", shop_db, "--store", store,
                 "--as-of", NIGHT, "--out", str(out_dir)]) == 0
    assert f"not sent to {other} by winback" in capsys.readouterr().out


def test_would_preview_is_the_nights_own_decision(
        env: Path, shop_db: str, capsys: pytest.CaptureFixture[str]) -> None:
    """``--would`` predicts, customer by customer, exactly what planning the night then claims
    (consent, holdouts, caps and arbitration included), renders the winner with the customer's
    own context, and says why when nothing would be sent; it claims nothing."""
    import datetime as dt

    from _support import night_decisions

    from tend import config, messages
    from tend.features.ingest import run_ingest
    from tend.programs.plan import plan_night
    from tend.programs.would import night_features, would_send
    from tend.store import migrate

    night = dt.date.fromisoformat(NIGHT)
    store = f"sqlite:///{env / 'store.db'}"
    migrate(store)
    run_ingest(shop_db, store, night, "ingest")
    settings = config.ShopSettings.from_env()
    secret = config.unsubscribe_secret()
    features = night_features(shop_db, store, night)
    assert features[1] == "the store"
    # Every detection runs over the whole shop, as the night's: a sample of customers keeps
    # the test short.
    sample = [str(c) for c in features[0].customers["customer_id"]][:24]
    predicted, fates = {}, set()
    for cid in sample:
        would = would_send(shop_db, store, str(cid), night, settings=settings, secret=secret,
                           features=features)
        fates |= set(would.decided["fate"])
        if would.winner is not None:
            predicted[str(cid)] = would.winner["program"]
    assert night_decisions(store).empty, "a preview must claim and log nothing"
    assert predicted and fates - {"claimed"}, "the demo night should have winners and losers"

    plan_night(shop_db, store, night, "night", settings=settings, secret=secret,
               renderer=messages.default_renderer(settings))
    decided = night_decisions(store)
    claimed = decided.loc[(decided["fate"] == "claimed") & decided["customer_id"].isin(sample)]
    assert dict(zip(claimed["customer_id"], claimed["program"], strict=True)) == predicted

    # through the CLI, on a fresh store for the same night (nothing claimed yet)
    fresh = f"sqlite:///{env / 'fresh.db'}"
    migrate(fresh)
    run_ingest(shop_db, fresh, night, "ingest")
    # the default night: the store's while unplanned, else tonight's
    from tend.dev.preview import next_night

    assert next_night(fresh) == night and next_night(store) != night
    winner, program = next(iter(predicted.items()))
    out_dir = env / "would"
    assert main(["preview", "--customer", winner, "--would", "--db", shop_db, "--store", fresh,
                 "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"night {NIGHT} for {winner} (features from the store" in printed
    assert f"content    what night {NIGHT} would send (not claimed)" in printed
    first_name = _first(shop_db, f"customer_id = '{winner}'")[1]
    assert first_name in next(out_dir.glob(f"{program}-*-{winner}.txt")).read_text()
    nobody = next(c for c in sample
                  if c not in predicted and c not in set(decided["customer_id"]))
    assert main(["preview", "--customer", nobody, "--would", "--db", shop_db, "--store",
                 fresh]) == 0
    assert "no program wants this customer that night" in capsys.readouterr().out
    assert main(["preview", "--would", "--db", shop_db, "--store", fresh]) == 2
    assert "add --customer ID" in capsys.readouterr().err
