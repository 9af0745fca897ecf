"""The configuration contract: flag > environment > embedded defaults."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from _support import DemoShops

from tend import config
from tend.errors import ConfigError


def test_defaults_are_sqlite_files_under_var(monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    for var in ("TEND_SHOP_URL", "TEND_STORE_URL", "TEND_DELIVERY", "TEND_OUTBOX_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("TEND_VAR_DIR", str(tmp_path))
    assert config.shop_url() == f"sqlite:///{tmp_path / 'shop.db'}"
    assert config.store_url() == f"sqlite:///{tmp_path / 'store.db'}"
    assert config.delivery_backend() == "outbox"
    assert config.outbox_dir() == tmp_path / "outbox"


def test_environment_then_flag_win(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEND_SHOP_URL", "postgresql://shop@db:5432/shop")
    assert config.shop_url() == "postgresql://shop@db:5432/shop"
    assert config.shop_url("sqlite:////x/flag.db") == "sqlite:////x/flag.db"
    monkeypatch.setenv("TEND_DELIVERY", "SMTP")
    assert config.delivery_backend() == "smtp"


def test_bad_values_say_how_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEND_DELIVERY", "pigeon")
    with pytest.raises(ConfigError, match="one of: outbox, smtp, sendgrid"):
        config.delivery_backend()
    with pytest.raises(ConfigError, match="postgresql://user@host:5432/db"):
        config.store_url("not a url")


def test_passwords_never_reach_logs() -> None:
    assert "s3cret" not in config.mask_url("postgresql://u:s3cret@h/db")


def test_shop_settings_from_env() -> None:
    s = config.ShopSettings.from_env({"TEND_SHOP_NAME": "Café Lune",
                                      "TEND_BASE_URL": "https://x.example/tend/"})
    assert s.name == "Café Lune" and s.from_name == "Café Lune"
    assert s.base_url == "https://x.example/tend"


def test_website_url_reaches_the_emails() -> None:
    from tend import messages
    from tend.messages.render import sample_context

    assert config.ShopSettings.from_env({}).website_url is None
    s = config.ShopSettings.from_env({"TEND_WEBSITE_URL": " https://shop.example/ "})
    assert s.website_url == "https://shop.example/"
    with_site = messages.default_renderer(s).render("winback", "en", sample_context("winback"),
                                           customer_id="C1")
    without = messages.default_renderer(config.ShopSettings.from_env({})).render(
        "winback", "en", sample_context("winback"), customer_id="C1")
    assert "https://shop.example/" in with_site.html
    assert "https://shop.example/" not in without.html


def test_empty_settings_count_as_unset() -> None:
    """docker compose passes `${VAR:-}` through as an empty string."""
    s = config.ShopSettings.from_env({"TEND_SHOP_NAME": "", "TEND_CURRENCY": " ",
                                      "TEND_REPLY_TO": "", "TEND_WEBSITE_URL": ""})
    d = config.ShopSettings.from_env({})
    assert s == d
    assert s.reply_to is None and s.website_url is None


def test_settings_read_at_call_time_with_fix_it_errors(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    for var in ("TEND_TIMEZONE", "TEND_PROGRAMS_FILE", "TEND_CLAIM_WORK_MEM",
                "TEND_PRODUCT_URL", "TEND_CHROMIUM", "TEND_SENDGRID_UVLOOP", "TEND_DELIVERY"):
        monkeypatch.delenv(var, raising=False)
    assert config.business_timezone() == config.DEFAULT_TIMEZONE
    assert config.programs_file() is None
    assert config.claim_work_mem() == "256MB"
    assert config.product_url_pattern() is None
    assert config.chromium_path() is None
    assert config.sendgrid_uvloop() is True
    assert config.delivery_pinned() is False

    monkeypatch.setenv("TEND_TIMEZONE", "Europe/Paris")
    monkeypatch.setenv("TEND_PROGRAMS_FILE", str(tmp_path / "programs.yaml"))
    monkeypatch.setenv("TEND_CLAIM_WORK_MEM", "1GB")
    monkeypatch.setenv("TEND_PRODUCT_URL", "https://shop.example/p/{sku}")
    monkeypatch.setenv("TEND_SENDGRID_UVLOOP", "0")
    monkeypatch.setenv("TEND_DELIVERY", "smtp")
    assert config.business_timezone() == "Europe/Paris"
    assert config.programs_file() == tmp_path / "programs.yaml"
    assert config.claim_work_mem() == "1GB"
    assert config.product_url_pattern() == "https://shop.example/p/{sku}"
    assert config.sendgrid_uvloop() is False
    assert config.delivery_pinned() is True

    for var, bad, hint in (("TEND_TIMEZONE", "Mars/Olympus", "America/Toronto"),
                           ("TEND_CLAIM_WORK_MEM", "lots", "256MB"),
                           ("TEND_PRODUCT_URL", "https://shop.example/p/", "{sku}")):
        monkeypatch.setenv(var, bad)
        getter = {"TEND_TIMEZONE": config.business_timezone,
                  "TEND_CLAIM_WORK_MEM": config.claim_work_mem,
                  "TEND_PRODUCT_URL": config.product_url_pattern}[var]
        with pytest.raises(ConfigError, match=var) as err:
            getter()
        assert hint in str(err.value)


@pytest.mark.parametrize("value", [
    '{"conn_type": "sendgrid", "password": "SG.k", "extra": {"webhook_public_key": "MFkw AB=="}}',
    '{"conn_type": "sendgrid", "extra": "{\\"webhook_public_key\\": \\"MFkwAB==\\"}"}',
    "sendgrid://:SG.k@?webhook_public_key=MFkwAB%3D%3D",
    "sendgrid://:SG.k@?__extra__=%7B%22webhook_public_key%22%3A+%22MFkwAB%3D%3D%22%7D",
])
def test_the_webhook_key_comes_from_the_sendgrid_connection_in_either_form(value: str) -> None:
    assert config.sendgrid_webhook_key({"AIRFLOW_CONN_SENDGRID_DEFAULT": value}) == "MFkwAB=="


def test_the_webhook_key_variable_wins_and_pem_armour_is_accepted() -> None:
    env = {"TEND_SENDGRID_WEBHOOK_KEY": "-----BEGIN PUBLIC KEY-----\nMFkw\nXYZ=\n"
                                        "-----END PUBLIC KEY-----\n",
           "AIRFLOW_CONN_SENDGRID_DEFAULT": '{"extra": {"webhook_public_key": "other"}}'}
    assert config.sendgrid_webhook_key(env) == "MFkwXYZ="
    assert config.sendgrid_webhook_key({}) is None
    assert config.sendgrid_webhook_key({"AIRFLOW_CONN_SENDGRID_DEFAULT": "sendgrid://h"}) is None


@pytest.mark.parametrize("value", ["{not json", '{"extra": "[1"}', '{"extra": [1]}', "no-scheme"])
def test_a_malformed_connection_variable_is_a_config_error(value: str) -> None:
    with pytest.raises(ConfigError, match="AIRFLOW_CONN_SENDGRID_DEFAULT"):
        config.env_connection("sendgrid_default", {"AIRFLOW_CONN_SENDGRID_DEFAULT": value})


def test_a_uri_connection_keeps_its_fields() -> None:
    conn = config.env_connection(
        "sendgrid_default", {"AIRFLOW_CONN_SENDGRID_DEFAULT": "http://me:p%40ss@127.0.0.1:8089"})
    assert conn is not None
    assert (conn.conn_type, conn.host, conn.port, conn.login, conn.password) == (
        "http", "127.0.0.1", 8089, "me", "p@ss")


@pytest.mark.parametrize(("name", "read", "default"), [
    ("TEND_CLAIM_BATCH_SIZE", config.claim_batch_size, 5000),
    ("TEND_SEND_RETRY_DELAY", config.send_retry_delay, 120),
    ("TEND_SEND_TASKS_PER_RUN", config.send_tasks_per_run, 4),
])
def test_scale_out_settings(monkeypatch: pytest.MonkeyPatch, name: str, read, default: int
                            ) -> None:
    monkeypatch.delenv(name, raising=False)
    assert read() == default
    monkeypatch.setenv(name, "")
    assert read() == default, "an empty value (compose's ${VAR:-}) counts as unset"
    monkeypatch.setenv(name, " 30 ")
    assert read() == 30
    for bad in ("0", "-5", "1e3", "ten"):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ConfigError, match=rf"{name}=.*positive whole number; use e\.g\."):
            read()


def test_the_claim_batch_size_cuts_the_night(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                             demo_shops: DemoShops) -> None:
    """plan_night without a batch_size takes TEND_CLAIM_BATCH_SIZE."""
    import datetime as dt

    from tend import messages
    from tend.features.ingest import run_ingest
    from tend.programs.plan import plan_night
    from tend.store import migrate

    night = dt.date(2026, 11, 20)
    shop, store = demo_shops(customers=200, seed=5, as_of=night), f"sqlite:///{tmp_path / 's.db'}"
    migrate(store)
    run_ingest(shop, store, night, "r1")
    monkeypatch.setenv("TEND_CLAIM_BATCH_SIZE", "10")
    settings = config.ShopSettings.from_env({})
    planned = plan_night(shop, store, night, "r1", settings=settings,
                         renderer=messages.default_renderer(settings), secret="s")
    claimed = planned.claimed()
    assert claimed > 20
    assert len(planned.batches) == -(-claimed // 10)


def test_order_events_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TEND_ORDER_EVENTS_URL", "TEND_ORDER_EVENTS_CHANNEL",
                 "AIRFLOW_CONN_TEND_ORDER_EVENTS"):
        monkeypatch.delenv(name, raising=False)
    assert config.order_events_channel() == "tend:orders"
    with pytest.raises(ConfigError, match="set TEND_ORDER_EVENTS_URL"):
        config.order_events_url()
    monkeypatch.setenv("AIRFLOW_CONN_TEND_ORDER_EVENTS",
                       '{"conn_type": "redis", "host": "redis", "port": 6380, '
                       '"password": "p@ss", "extra": {"db": 3}}')
    assert config.order_events_url() == "redis://:p%40ss@redis:6380/3"
    monkeypatch.setenv("AIRFLOW_CONN_TEND_ORDER_EVENTS", "redis://redis:6379?db=2")
    assert config.order_events_url() == "redis://redis:6379/2"
    monkeypatch.setenv("TEND_ORDER_EVENTS_URL", "redis://10.0.0.5:6379/1")
    assert config.order_events_url() == "redis://10.0.0.5:6379/1"
    monkeypatch.setenv("TEND_ORDER_EVENTS_URL", "http://10.0.0.5")
    with pytest.raises(ConfigError, match="not a Redis URL"):
        config.order_events_url()
    monkeypatch.setenv("TEND_ORDER_EVENTS_CHANNEL", " shop1:orders ")
    assert config.order_events_channel() == "shop1:orders"
    for bad in ("two words", "orders.*"):
        monkeypatch.setenv("TEND_ORDER_EVENTS_CHANNEL", bad)
        with pytest.raises(ConfigError, match="TEND_ORDER_EVENTS_CHANNEL"):
            config.order_events_channel()


def test_a_sku_goes_into_the_product_url_percent_encoded() -> None:
    """A sku holding URL syntax still links to its own page, and a pattern's other braces
    (a template of the shop's own) are left alone instead of failing the night."""
    assert (config.product_url("https://shop.example/p/{sku}", 'COF/BEANS?HOUSE&"x"#1')
            == "https://shop.example/p/COF%2FBEANS%3FHOUSE%26%22x%22%231")
    assert (config.product_url("https://shop.example/p?id={sku}&utm={campaign}", "A 1")
            == "https://shop.example/p?id=A%201&utm={campaign}")
    assert config.product_url("https://shop.example/p/{sku}", "SKU-12") == \
        "https://shop.example/p/SKU-12"


def test_today_is_the_utc_date_unless_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEND_TODAY", raising=False)
    assert config.today() == dt.datetime.now(dt.UTC).date()
    monkeypatch.setenv("TEND_TODAY", " 2027-03-01 ")
    assert config.today() == dt.date(2027, 3, 1)
    monkeypatch.setenv("TEND_TODAY", "yesterday")
    with pytest.raises(ConfigError, match=r"TEND_TODAY='yesterday' is not a date; use "
                                          r"YYYY-MM-DD"):
        config.today()
