"""``tend templates check`` and ``tend preview``: see what goes out before anything is sent.

``preview`` renders one program's email for one real customer of the shop (name, email,
language, order history from the shop database) and fills what only a night's signals would
know (the product due, the milestone) from the template's sample context. It writes the HTML
and the plain text exactly as they would be sent and, with ``--png``, a screenshot made by
headless Chromium, so marketing can look at the message without an email client.

Chromium is Debian's ``chromium`` package (``make install`` installs it when missing; set
``TEND_CHROMIUM`` to use another binary). It runs without network access to the page's
resources: images from the shop's site do not load in screenshots.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from tend import config
from tend.config import ShopSettings
from tend.errors import ConfigError, DataError, TemplateError
from tend.messages.render import TEMPLATE_SPECS, RenderedEmail, Renderer, sample_context
from tend.messages.tokens import voucher_code

__all__ = ["Preview", "check_templates", "find_chromium", "make_preview", "screenshot"]

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-extensions", "--disable-sync", "--no-first-run", "--no-default-browser-check",
    "--hide-scrollbars", "--mute-audio", "--force-device-scale-factor=1",
)


# --- tend templates check ----------------------------------------------------------------------


def check_templates(
    renderer: Renderer,
    *,
    locales: Sequence[str] | None = None,
    templates: Sequence[str] | None = None,
    programs: Sequence[tuple[str, str, str]] = (),
    out: Callable[[str], None] = print,
) -> int:
    """Render every template in every locale against its sample contexts; print one line per
    template and every problem. ``programs``: (program, template, kind) from the registry, so
    a template is also checked as the kind its program sends it as.

    Returns the number of templates checked; raises TemplateError (exit status 2) naming the
    first problem when there is any.
    """
    locales = list(locales or renderer.locales())
    results = renderer.check_all(locales, templates)
    for program, template, kind in programs:
        if templates and template not in templates:
            continue
        spec = TEMPLATE_SPECS.get(template)
        if spec is not None and spec.kind == kind:
            continue
        results.setdefault(template, [])
        results[template] += [f"program {program} ({kind}): {p}"
                              for p in renderer.check(template, locales, kind=kind)]
    failed = {name: problems for name, problems in results.items() if problems}
    for name, problems in sorted(results.items()):
        spec = TEMPLATE_SPECS.get(name)
        kind = spec.kind if spec else "?"
        status = "ok" if not problems else f"FAILED ({len(problems)} problem(s))"
        out(f"{name:<14} {kind:<13} {' '.join(locales):<8} {status}")
        for problem in problems:
            out(f"  - {problem}")
    if failed:
        first_name, first = next(iter(sorted(failed.items())))
        total = sum(len(p) for p in failed.values())
        raise TemplateError(
            f"templates check failed: {total} problem(s) in {', '.join(sorted(failed))}; "
            f"first: {first_name} {first[0]}",
            template=first_name,
        )
    out(f"{len(results)} template(s) OK in {', '.join(locales)}")
    return len(results)


# --- tend preview ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preview:
    program: str
    template: str
    kind: str
    locale: str
    customer_id: str | None
    email: RenderedEmail
    html_path: Path
    text_path: Path
    png_path: Path | None
    #: What was rendered: the message as sent (from the store), or the template's sample
    #: content around the customer's own facts.
    source: str = "the template's sample content"

    def lines(self) -> list[str]:
        who = self.customer_id or "the sample customer"
        out = [
            f"preview of {self.program} ({self.email.template}, {self.kind}) for {who}",
            f"  content    {self.source}",
            f"  subject    {self.email.subject}",
            f"  preheader  {self.email.preheader}",
            f"  html       {self.html_path}",
            f"  text       {self.text_path}",
        ]
        if self.png_path is not None:
            out.append(f"  png        {self.png_path}")
        return out


def make_preview(
    program: str,
    *,
    renderer: Renderer,
    settings: ShopSettings,
    out_dir: Path,
    locale: str | None = None,
    customer_id: str | None = None,
    shop_url: str | None = None,
    as_of: dt.date | None = None,
    png: bool = False,
    width: int = 640,
    dark: bool = False,
    secret: str | None = None,
    store_url: str | None = None,
) -> Preview:
    """Render ``program``'s email for ``customer_id`` (or the sample customer) and write it.

    With a customer and a store, the message ``program`` claimed for them (the newest on or
    before ``as_of``) is rendered from its stored context: exactly what they were sent, its
    products and voucher included. A customer the program never chose gets the template's
    sample content around their own facts, and the preview says so.
    """
    template, kind, offer = _program(program)
    as_of = as_of or dt.date.today()
    sent = _sent(store_url, customer_id, program, as_of) if customer_id and store_url else None
    if sent is not None:
        ctx = sent["ctx"]
        locale = locale or ctx["locale"]
        return _write(program, ctx["template"], sent["kind"], locale, customer_id, out_dir,
                      png=png, width=width, dark=dark, source=sent["source"],
                      email=renderer.render(ctx["template"], locale, ctx,
                                            customer_id=str(customer_id), kind=sent["kind"]))
    customer: dict[str, Any] | None = None
    if customer_id is not None:
        customer = _customer(shop_url or config.shop_url(), customer_id, as_of)
    locale = locale or (customer or {}).get("locale") or settings.default_locale
    ctx = sample_context(template, locale)
    if customer is not None:
        _personalise(ctx, customer, as_of)
    if offer is not None:
        code = voucher_code(secret or config.unsubscribe_secret(),
                            f"preview:{program}:{customer_id or 'sample'}", offer.code_prefix)
        ctx["offer"] = {"code": code, "amount": Decimal(str(offer.amount)),
                        "currency": settings.currency, "kind": offer.kind,
                        "expires_on": as_of + dt.timedelta(days=offer.valid_days)}
    email = renderer.render(template, locale, ctx,
                            customer_id=customer_id or str(ctx["customer"]["customer_id"]),
                            kind=kind)
    source = ("the template's sample content" if customer_id is None else
              f"not sent to {customer_id} by {program}: the template's sample content around "
              "their own facts (what tonight would send them: add --would)")
    return _write(program, template, kind, locale, customer_id, out_dir, png=png, width=width,
                  dark=dark, email=email, source=source)


@dataclass
class WouldPreview:
    """``tend preview --customer C --would``: the night's decision for C, and the winning
    message rendered (None when nothing would be sent)."""

    would: Any  # tend.programs.would.Would
    preview: Preview | None
    program: str | None

    def lines(self) -> list[str]:
        out = self.would.lines()
        winner = self.would.winner
        if self.program and (winner is None or winner["program"] != self.program):
            mine = self.would.decided.loc[self.would.decided["program"] == self.program]
            out.append(f"{self.program} would send nothing: " + (
                f"{mine.iloc[0]['fate']}: {mine.iloc[0]['why']}" if len(mine) else
                "no signal of theirs is due for it that night"))
        if self.preview is not None:
            out += self.preview.lines()
        return out


def make_would_preview(
    program: str | None,
    *,
    renderer: Renderer,
    settings: ShopSettings,
    out_dir: Path,
    customer_id: str,
    shop_url: str,
    store_url: str,
    as_of: dt.date | None = None,
    locale: str | None = None,
    png: bool = False,
    width: int = 640,
    dark: bool = False,
    secret: str | None = None,
) -> WouldPreview:
    """What the night ``as_of`` (default: ``next_night``) would send ``customer_id``: the
    same decision as the night for that one customer (``tend.programs.would``), nothing
    claimed. The winner is rendered from the context the
    night would store; ``program``, if given, must be a program, and the preview says why it
    would not be the one."""
    from tend.messages.contexts import context_for_render
    from tend.programs.would import would_send

    if program is not None:
        _program(program)  # a clear error for a name that is no program
    night = as_of or next_night(store_url)
    would = would_send(shop_url, store_url, customer_id, night, settings=settings,
                       secret=secret or config.unsubscribe_secret())
    preview = None
    if would.winner is not None and would.context is not None:
        ctx = context_for_render(would.context)
        kind = str(would.winner["kind"])
        loc = locale or ctx["locale"]
        preview = _write(
            str(would.winner["program"]), ctx["template"], kind, loc, customer_id, out_dir,
            png=png, width=width, dark=dark,
            source=f"what night {night} would send (not claimed): {would.winner['why']}",
            email=renderer.render(ctx["template"], loc, ctx, customer_id=customer_id,
                                  kind=kind))
    return WouldPreview(would, preview, program)


def next_night(store_url: str) -> dt.date:
    """The night the next tend_programs run will plan: the one the store's features are at
    while no run has planned it, else today in the shop's timezone (tonight's ingest)."""
    from zoneinfo import ZoneInfo

    from tend.features.store import store_as_of
    from tend.store import ledger
    from tend.store.db import connect

    stored = store_as_of(store_url)
    if stored is not None:
        with connect(store_url).connect() as conn:
            if not ledger.nights_decided(conn, [stored]):
                return stored
    return dt.datetime.now(ZoneInfo(config.business_timezone())).date()


def _sent(store_url: str, customer_id: str, program: str, as_of: dt.date
          ) -> dict[str, Any] | None:
    """The stored context of the message ``program`` claimed for the customer, if any."""
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url

    from tend.messages.contexts import context_for_render
    from tend.store import ledger
    from tend.store.db import connect

    url = make_url(store_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        return None  # no store yet: nothing was sent
    with connect(store_url).connect() as conn:
        if not inspect(conn).has_table("decision_log"):
            return None
        found = ledger.last_message(conn, customer_id, program, as_of)
    if found is None or not found["context"]:
        return None
    return {"ctx": context_for_render(found["context"]), "kind": found["kind"],
            "source": f"message {found['message_id']} of night {found['as_of']} "
                      f"({found['status']}), rendered from its stored context"}


def _write(program: str, template: str, kind: str, locale: str, customer_id: str | None,
           out_dir: Path, *, png: bool, width: int, dark: bool, email: RenderedEmail,
           source: str) -> Preview:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = _safe(f"{program}-{locale}-{customer_id or 'sample'}")
    html_path = out_dir / f"{stem}.html"
    text_path = out_dir / f"{stem}.txt"
    html_path.write_text(email.html, encoding="utf-8")
    text_path.write_text(
        f"Subject: {email.subject}\nPreheader: {email.preheader}\n\n{email.text}",
        encoding="utf-8",
    )
    png_path = None
    if png:
        png_path = screenshot(html_path, out_dir / f"{stem}{'-dark' if dark else ''}.png",
                              width=width, dark=dark)
    return Preview(program, template, kind, locale, customer_id, email, html_path, text_path,
                   png_path, source)


def _program(name: str) -> tuple[str, str, Any]:
    """(template, kind, offer) of a program in the registry, or of a template by name."""
    from tend.programs.registry import load_registry

    registry = load_registry()
    for program in registry.programs:
        if program.name == name:
            return program.template, program.kind, program.offer
    if name in TEMPLATE_SPECS:
        return name, TEMPLATE_SPECS[name].kind, None
    raise ConfigError(
        f"no program or template named {name!r}; programs: "
        f"{', '.join(p.name for p in registry.programs)}; templates: "
        f"{', '.join(sorted(TEMPLATE_SPECS))}"
    )


def _customer(shop_url: str, customer_id: str, as_of: dt.date) -> dict[str, Any]:
    """The customer as the shop database has them, with loyalty facts from their orders."""
    import pandas as pd

    from tend.shop import read as shop

    shop.require_schema(shop_url)
    found = shop.read_customers(shop_url, [customer_id])
    if found.empty:
        raise DataError(
            f"no customer {customer_id!r} in the shop database {config.mask_url(shop_url)}; "
            "check the id (or leave out --customer to preview the sample customer)"
        )
    row = found.iloc[0].to_dict()
    orders, _ = shop.read_orders(shop_url, as_of, [customer_id])

    def text(value: Any) -> str | None:
        if value is None or (not isinstance(value, str) and pd.isna(value)):
            return None
        return str(value)

    customer: dict[str, Any] = {
        "customer_id": str(row["customer_id"]),
        "first_name": text(row.get("first_name")),
        "last_name": text(row.get("last_name")),
        "email": text(row.get("email")),
        "locale": text(row.get("locale")),
    }
    if len(orders):
        dates = orders["ordered_at"]
        customer["orders_count"] = len(orders)
        customer["member_since"] = dates.min().date()
        customer["last_order_date"] = dates.max().date()
    return customer


def _personalise(ctx: dict[str, Any], customer: dict[str, Any], as_of: dt.date) -> None:
    """The customer's own facts over the sample's; the sample keeps what needs a signal."""
    sample = ctx["customer"]
    for key in ("customer_id", "first_name", "last_name", "email", "locale"):
        sample[key] = customer[key]
    for key in ("orders_count", "member_since"):
        if key in sample and key in customer:
            sample[key] = customer[key]
    signal = ctx.get("signal")
    if isinstance(signal, dict) and "last_order_date" in customer:
        if "last_order_date" in signal:
            signal["last_order_date"] = customer["last_order_date"]
        if "days_since_last_order" in signal:
            signal["days_since_last_order"] = (as_of - customer["last_order_date"]).days
        if "orders_count" in signal:
            signal["orders_count"] = customer["orders_count"]
        if signal.get("name") == "loyalty_nth_order" and "nth" in signal:
            signal["nth"] = customer["orders_count"]


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# --- screenshots ---------------------------------------------------------------------------------


def find_chromium() -> str | None:
    """``TEND_CHROMIUM``, else chromium (Debian), chromium-browser or google-chrome on PATH."""
    explicit = config.chromium_path()
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


_MEASURE = (
    "<script>window.addEventListener('load', function () {"
    "document.documentElement.setAttribute('data-tend-height',"
    " String(Math.ceil(document.documentElement.scrollHeight)));});</script>"
)


def screenshot(html_path: Path, png_path: Path, *, width: int = 640, dark: bool = False,
               timeout: float = 90.0) -> Path:
    """A full-length PNG of ``html_path`` as a ``width`` px wide window shows it.

    Two headless Chromium runs: the first measures the page's height (a copy of the page
    with a tiny script, printed with --dump-dom), the second takes the screenshot of the
    original page at exactly that height.
    """
    chromium = find_chromium()
    if chromium is None:
        raise ConfigError(
            "headless Chromium is not installed, so no PNG preview; run `make install` (it "
            "installs Debian's chromium package) or `apt-get install chromium`, or set "
            "TEND_CHROMIUM to a Chromium/Chrome binary"
        )
    html_path = html_path.resolve()
    png_path = png_path.resolve()
    extra = ["--force-dark-mode", "--blink-settings=preferredColorScheme=0"] if dark else []
    with tempfile.TemporaryDirectory(prefix="tend-chromium-") as tmp:
        measure = Path(tmp) / "measure.html"
        source = html_path.read_text(encoding="utf-8")
        marked = (source.replace("</body>", _MEASURE + "</body>", 1) if "</body>" in source
                  else source + _MEASURE)
        measure.write_text(marked, encoding="utf-8")
        base = [chromium, *CHROMIUM_FLAGS, *extra, f"--user-data-dir={Path(tmp) / 'profile'}"]
        dom = _run([*base, f"--window-size={width},800", "--virtual-time-budget=2000",
                    "--dump-dom", measure.as_uri()], timeout)
        m = re.search(r'data-tend-height="(\d+)"', dom.stdout)
        height = min(max(int(m.group(1)) if m else 1200, 200), 16000)
        png_path.unlink(missing_ok=True)
        _run([*base, f"--window-size={width},{height}", f"--screenshot={png_path}",
              html_path.as_uri()], timeout)
    if not png_path.is_file() or png_path.stat().st_size == 0:
        raise ConfigError(f"Chromium ({chromium}) did not write {png_path}; run it by hand "
                          "with --headless --screenshot to see why")
    return png_path


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ConfigError(f"Chromium took more than {timeout:.0f}s; is it working? "
                          f"({' '.join(cmd[:2])} ...)") from exc
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        raise ConfigError(f"Chromium failed (exit {done.returncode}): {tail}")
    return done
