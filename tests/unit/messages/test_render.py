"""Rendering emails from the real templates in templates/email."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from _support import TEMPLATES, shop_settings

from tend.errors import ConfigError, TemplateError
from tend.messages.compliance import ComplianceLinks
from tend.messages.formatting import (
    format_long_date,
    format_money,
    format_number,
    format_ordinal,
    format_plural,
)
from tend.messages.render import RenderedEmail, Renderer, sample_context
from tend.messages.tokens import verify_token

SECRET = "render-test-secret"

SHOP = shop_settings(
    name="Vélo & Café Lemieux",
    postal_address="1234, rue Saint-Denis\nMontréal (Québec)  H2X 3K2",
    from_email="bonjour@velo.example",
    from_name="Vélo Lemieux",
    base_url="http://localhost:8090",
    website_url="https://velo.example",
)


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(TEMPLATES, SHOP, SECRET)


def _ctx(**customer: Any) -> dict[str, Any]:
    ctx = sample_context("winback")
    ctx["customer"].update(customer)
    return ctx


def _render(renderer: Renderer, locale: str = "en", **customer: Any) -> RenderedEmail:
    return renderer.render("winback", locale, _ctx(**customer), customer_id="cus_000142")


# --- formatting ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "currency", "locale", "expected"),
    [
        (Decimal("10"), "CAD", "fr", "10,00\xa0$"),
        (Decimal("10"), "CAD", "fr-CA", "10,00\xa0$"),
        (10.0, "CAD", "en", "$10.00"),
        (Decimal("10"), "USD", "en", "$10.00"),
        (Decimal("10"), "EUR", "fr", "10,00\xa0€"),
    ],
)
def test_money(amount: Any, currency: str, locale: str, expected: str) -> None:
    assert format_money(amount, currency, locale) == expected


@pytest.mark.parametrize(
    ("day", "locale", "expected"),
    [
        (date(2027, 3, 12), "fr", "12 mars 2027"),
        (date(2027, 3, 1), "fr_CA", "1er mars 2027"),
        (date(2027, 3, 12), "en", "March 12, 2027"),
    ],
)
def test_long_date(day: date, locale: str, expected: str) -> None:
    assert format_long_date(day, locale) == expected


# --- winback in both locales ---------------------------------------------------------------------


def test_winback_en(renderer: Renderer) -> None:
    email = _render(renderer, "en")
    assert email.subject == "Marie, here's $10.00 off your next order"
    assert "March 12, 2027" in email.preheader
    assert "REVIENS-7Q2F" in email.preheader
    for body in (email.html, email.text):
        assert "Hi Marie," in body
        assert "$10.00" in body
        assert "REVIENS-7Q2F" in body
        assert "March 12, 2027" in body
    assert '<html lang="en"' in email.html
    assert email.preheader in email.html.replace("&#39;", "'")


def test_winback_fr(renderer: Renderer) -> None:
    email = _render(renderer, "fr")
    assert email.subject == "Marie, un rabais de 10,00\xa0$ vous attend"
    assert "12 mars 2027" in email.preheader
    for body in (email.html, email.text):
        assert "Bonjour Marie," in body
        assert "10,00\xa0$" in body
        assert "12 mars 2027" in body
        assert "courriel" in body
    assert '<html lang="fr"' in email.html


def test_regional_locale_uses_language_templates_and_keeps_region(renderer: Renderer) -> None:
    email = _render(renderer, "fr-CA")
    assert "Bonjour Marie," in email.text
    assert '<html lang="fr-CA"' in email.html


def test_percent_offer(renderer: Renderer) -> None:
    ctx = sample_context("winback")
    ctx["offer"].update(kind="percent", amount=15)
    assert renderer.render("winback", "en", ctx, customer_id="c").subject.endswith(
        "15% off your next order"
    )
    assert "15\xa0%" in renderer.render("winback", "fr", ctx, customer_id="c").subject


def test_signal_reason_is_never_shown(renderer: Renderer) -> None:
    reason = sample_context("winback")["signal"]["reason"]
    for locale in ("en", "fr"):
        email = _render(renderer, locale)
        assert reason not in email.html
        assert reason not in email.text


# --- customer data is data, not markup or headers ------------------------------------------------


def test_first_name_is_escaped_in_html(renderer: Renderer) -> None:
    email = _render(renderer, "en", first_name="<script>alert(1)</script>")
    assert "<script>" not in email.html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    # Plain text is not HTML: the name shows as typed, not as &lt;...
    assert "Hi <script>alert(1)</script>," in email.text


def test_shop_name_is_escaped_everywhere_in_html(renderer: Renderer) -> None:
    email = _render(renderer, "fr")
    assert "Vélo & Café" not in email.html
    assert "Vélo &amp; Café" in email.html
    assert "Vélo & Café Lemieux" in email.text


@pytest.mark.parametrize("locale", ["en", "fr"])
@pytest.mark.parametrize(
    "first_name", ["Marie\r\nBcc: x@y", "Marie\nBcc: x@y", "Marie\rBcc: x@y", "Ma\x00rie\u2028x"]
)
def test_line_breaks_never_reach_the_subject(
    renderer: Renderer, locale: str, first_name: str
) -> None:
    email = _render(renderer, locale, first_name=first_name)
    for line in (email.subject, email.preheader):
        assert "\r" not in line
        assert "\n" not in line
        assert not any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 for ch in line)
    if "Bcc" in first_name:
        assert email.subject.startswith("Marie Bcc: x@y, ")


@pytest.mark.parametrize("first_name", [None, "", "   "])
@pytest.mark.parametrize(
    ("locale", "greeting", "subject_start"),
    [("en", "Hello,", "Here's "), ("fr", "Bonjour,", "Un rabais")],
)
def test_missing_first_name_falls_back(
    renderer: Renderer, first_name: str | None, locale: str, greeting: str, subject_start: str
) -> None:
    email = _render(renderer, locale, first_name=first_name)
    assert email.subject.startswith(subject_start)
    assert greeting in email.text
    assert greeting in email.html
    assert "None" not in email.text
    assert "Hi ," not in email.text


@pytest.mark.parametrize("locale", ["de", "pt-BR", "klingon", "", "xx_YY"])
def test_unknown_locale_falls_back_to_default(renderer: Renderer, locale: str) -> None:
    email = _render(renderer, locale)
    assert "Hi Marie," in email.text
    assert "$10.00" in email.text  # formatted like the templates, not like German


def test_shop_default_locale_is_the_fallback(tmp_path: Path) -> None:
    shop_fr = replace(SHOP, default_locale="fr")
    email = Renderer(TEMPLATES, shop_fr, SECRET).render(
        "winback", "de", sample_context("winback"), customer_id="c"
    )
    assert "Bonjour Marie," in email.text


# --- compliance ----------------------------------------------------------------------------------


@pytest.mark.parametrize("locale", ["en", "fr"])
def test_unsubscribe_link_and_headers(renderer: Renderer, locale: str) -> None:
    email = _render(renderer, locale)
    unsubscribe = email.headers["List-Unsubscribe"]
    assert unsubscribe.startswith("<http://localhost:8090/unsubscribe/")
    assert unsubscribe.endswith(">")
    assert email.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = unsubscribe[1:-1]
    assert url in email.html
    assert url in email.text
    assert verify_token(SECRET, _token(url)) == "cus_000142"
    preferences = [w for w in email.text.split() if "/preferences/" in w]
    assert len(preferences) == 1
    assert preferences[0] in email.html
    assert verify_token(SECRET, _token(preferences[0]), "preferences") == "cus_000142"
    # Footer identifies the sender (CASL): name and postal address.
    assert "1234, rue Saint-Denis" in email.text
    assert "Montréal (Québec)  H2X 3K2" in email.html


def _token(url: str) -> str:
    """The signed token of a page link (its last path segment; the query is the language)."""
    return urlsplit(url).path.rsplit("/", 1)[1]


def test_compliance_links_carry_the_messages_language() -> None:
    """The pages speak the language the link names, not the device's it is opened on; the
    List-Unsubscribe header is the footer's URL, query included (RFC 8058 posts to it)."""
    links = ComplianceLinks("http://localhost:8090/", SECRET.encode())
    unsubscribe, preferences, headers = links.for_customer("cus_000142", "service", "fr")
    assert unsubscribe is not None and preferences is not None
    assert headers == {"List-Unsubscribe": f"<{unsubscribe}>",
                       "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    for url, purpose in ((unsubscribe, "unsubscribe"), (preferences, "preferences")):
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc, parts.query) == ("http", "localhost:8090", "lang=fr")
        assert verify_token(SECRET, _token(url), purpose) == "cus_000142"
    bare, _, bare_headers = links.for_customer("cus_000142", "marketing")
    assert bare is not None and "?" not in bare and bare == unsubscribe.split("?")[0]
    assert bare_headers["List-Unsubscribe"] == f"<{bare}>"
    assert links.for_customer("cus_000142", "transactional", "fr") == (None, None, {})


def test_transactional_has_no_unsubscribe(renderer: Renderer) -> None:
    email = renderer.render(
        "winback", "en", sample_context("winback"), customer_id="c", kind="transactional"
    )
    assert email.headers == {}
    assert "/unsubscribe/" not in email.html
    assert "/unsubscribe/" not in email.text


def test_unknown_kind_is_refused(renderer: Renderer) -> None:
    with pytest.raises(ConfigError, match="marketting"):
        renderer.render(
            "winback", "en", sample_context("winback"), customer_id="c", kind="marketting"
        )


def test_context_cannot_override_unsubscribe_url(renderer: Renderer) -> None:
    ctx = {**sample_context("winback"), "unsubscribe_url": "http://evil.example/"}
    email = renderer.render("winback", "en", ctx, customer_id="c")
    assert "evil.example" not in email.html


def _copy_templates(tmp_path: Path) -> Path:
    target = tmp_path / "email"
    shutil.copytree(TEMPLATES, target)
    return target


def test_marketing_without_unsubscribe_link_is_refused(tmp_path: Path) -> None:
    templates = _copy_templates(tmp_path)
    (templates / "en" / "winback.txt.j2").write_text("Hi {{ customer.first_name }}\n")
    renderer = Renderer(templates, SHOP, SECRET)
    with pytest.raises(TemplateError, match=r"en/winback\.txt\.j2.*unsubscribe_url") as info:
        renderer.render("winback", "en", sample_context("winback"), customer_id="c")
    assert info.value.template == "en/winback.txt.j2"


# --- errors that say how to fix them -------------------------------------------------------------


def test_missing_variable_names_template_and_variable(renderer: Renderer) -> None:
    ctx = sample_context("winback")
    del ctx["offer"]
    with pytest.raises(TemplateError) as info:
        renderer.render("winback", "en", ctx, customer_id="c")
    message = str(info.value)
    assert "en/winback.subject.j2" in message
    assert "'offer'" in message
    assert "programs.yaml" in message
    assert info.value.template == "en/winback.subject.j2"


def test_missing_key_names_the_key_and_lists_what_exists(renderer: Renderer) -> None:
    ctx = sample_context("winback")
    del ctx["offer"]["expires_on"]
    with pytest.raises(TemplateError, match=r"fr/winback\.preheader\.j2.*'expires_on'.*code"):
        renderer.render("winback", "fr", ctx, customer_id="c")


def test_missing_variable_in_html_body_names_the_file_and_line(tmp_path: Path) -> None:
    templates = _copy_templates(tmp_path)
    html = templates / "en" / "winback.html.j2"
    html.write_text(
        html.read_text().replace("{% block content %}", "{% block content %}{{ voucher.code }}")
    )
    with pytest.raises(TemplateError, match=r"en/winback\.html\.j2 line \d+ .*'voucher'"):
        Renderer(templates, SHOP, SECRET).render(
            "winback", "en", sample_context("winback"), customer_id="c"
        )


def test_missing_shared_string_names_strings_file(tmp_path: Path) -> None:
    templates = _copy_templates(tmp_path)
    text = templates / "fr" / "winback.txt.j2"
    text.write_text(
        text.read_text().replace("{% block content %}", "{% block content %}{{ t.bye }}")
    )
    with pytest.raises(TemplateError, match=r"t\.bye but fr/strings\.j2 does not define it"):
        Renderer(templates, SHOP, SECRET).render(
            "winback", "fr", sample_context("winback"), customer_id="c"
        )


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    templates = _copy_templates(tmp_path)
    (templates / "en" / "winback.subject.j2").write_text("Hi {{ customer.first_name \n")
    with pytest.raises(TemplateError, match=r"en/winback\.subject\.j2 has a syntax error"):
        Renderer(templates, SHOP, SECRET).render(
            "winback", "en", sample_context("winback"), customer_id="c"
        )


def test_unknown_template(renderer: Renderer) -> None:
    with pytest.raises(TemplateError, match="no templates for 'nope'"):
        renderer.render("nope", "en", {}, customer_id="c")


@pytest.mark.parametrize("name", ["../etc/passwd", "Winback", "win back", ""])
def test_bad_template_names(renderer: Renderer, name: str) -> None:
    with pytest.raises(TemplateError, match="not valid"):
        renderer.render(name, "en", {}, customer_id="c")


def test_partly_translated_locale_is_an_error(tmp_path: Path) -> None:
    templates = _copy_templates(tmp_path)
    (templates / "fr" / "winback.txt.j2").unlink()
    renderer = Renderer(templates, SHOP, SECRET)
    with pytest.raises(TemplateError, match=r"fr/winback\.txt\.j2 missing"):
        renderer.render("winback", "fr", sample_context("winback"), customer_id="c")


def test_wrong_templates_dir(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Renderer(tmp_path / "nowhere", SHOP, SECRET)
    with pytest.raises(ConfigError, match=r"layouts/base\.html\.j2"):
        Renderer(tmp_path, SHOP, SECRET)
    with pytest.raises(ConfigError, match="secret"):
        Renderer(TEMPLATES, SHOP, "")


# --- check() and sample_context() ----------------------------------------------------------------


def test_check_passes_on_both_locales(renderer: Renderer) -> None:
    assert renderer.check("winback", ["en", "fr"], sample_context("winback")) == []


def test_check_reports_missing_locale_and_broken_sample(renderer: Renderer) -> None:
    problems = renderer.check("winback", ["en", "es"], sample_context("winback"))
    assert len(problems) == 1
    assert problems[0].startswith("es: missing es/winback.subject.j2")
    ctx = sample_context("winback")
    del ctx["offer"]
    problems = renderer.check("winback", ["en", "fr"], ctx)
    assert [p.split(":")[0] for p in problems] == ["en", "fr"]
    assert all("'offer'" in p for p in problems)


def test_sample_context_is_a_fresh_copy() -> None:
    first = sample_context("winback")
    first["customer"]["first_name"] = "changed"
    assert sample_context("winback")["customer"]["first_name"] == "Marie"
    with pytest.raises(TemplateError, match="no sample context"):
        sample_context("nope")


# --- partials not used by winback yet ------------------------------------------------------------


def test_product_card_partial_escapes_and_formats(renderer: Renderer) -> None:
    module = renderer.env.get_template("partials/product_card.html.j2").module
    strings = renderer._strings_for("fr")
    html = str(
        module.product_card(  # type: ignore[attr-defined]
            {
                "name": "Chaîne <b>11v</b>",
                "url": "https://velo.example/p/1",
                "price": Decimal("42"),
                "currency": "CAD",
                "image_url": None,
            },
            strings,
            "fr",
        )
    )
    assert "Chaîne &lt;b&gt;11v&lt;/b&gt;" in html
    assert "42,00\xa0$" in html
    assert "Voir le produit" in html
    text_module = renderer.env.get_template("partials/product_card.txt.j2").module
    text = str(
        text_module.product_card(  # type: ignore[attr-defined]
            {"name": "Chain", "url": "https://velo.example/p/1", "price": 42, "currency": "CAD"},
            renderer._strings_for("en"),
            "en",
        )
    )
    assert "Chain ($42.00)" in text


# --- Babel: plurals, ordinals, months, numbers (cached per value and locale) ---------------------


@pytest.mark.parametrize(
    ("n", "locale", "expected"),
    [(0, "en", "0 orders"), (1, "en", "1 order"), (2, "en", "2 orders"),
     (0, "fr", "0 commande"), (1, "fr", "1 commande"), (2, "fr", "2 commandes"),
     (1500, "fr_CA", "1\xa0500 commandes"), (1500, "en", "1,500 orders")],
)
def test_plural(n: int, locale: str, expected: str) -> None:
    one, other = ("{n} commande", "{n} commandes") if locale.startswith("fr") else (
        "{n} order", "{n} orders")
    assert format_plural(n, locale, one=one, other=other) == expected


@pytest.mark.parametrize(
    ("n", "expected_en", "expected_fr"),
    [(1, "1st", "1re"), (2, "2nd", "2e"), (3, "3rd", "3e"), (4, "4th", "4e"), (11, "11th", "11e"),
     (12, "12th", "12e"), (13, "13th", "13e"), (21, "21st", "21e"), (22, "22nd", "22e"),
     (103, "103rd", "103e")],
)
def test_ordinal(n: int, expected_en: str, expected_fr: str) -> None:
    assert format_ordinal(n, "en", one="{n}st", two="{n}nd", few="{n}rd",
                          other="{n}th") == expected_en
    assert format_ordinal(n, "fr", one="{n}re", other="{n}e") == expected_fr


def test_plural_needs_other_and_a_number() -> None:
    with pytest.raises(ValueError, match="other"):
        format_plural(1, "en", one="x")
    with pytest.raises(ValueError, match="not a number"):
        format_plural(None, "en", one="x", other="y")


@pytest.mark.parametrize(
    ("style", "locale", "expected"),
    [("month", "fr", "mars"), ("month", "en", "March"), ("month_year", "fr_CA", "mars 2021"),
     ("month_year", "en", "March 2021"), ("short", "en", "3/8/21"), ("long", "fr", "8 mars 2021")],
)
def test_date_styles(style: str, locale: str, expected: str) -> None:
    assert format_long_date(date(2021, 3, 8), locale, style) == expected


def test_unknown_date_style_is_an_error() -> None:
    with pytest.raises(ValueError, match="date style"):
        format_long_date(date(2021, 3, 8), "en", "weird")


def test_number_and_string_amounts() -> None:
    assert format_number(1234567, "fr") == "1\u202f234\u202f567"
    assert format_money("10", "CAD", "fr") == "10,00\xa0$"
    with pytest.raises(ValueError, match="not a number"):
        format_money("ten", "CAD", "en")


# --- kinds and results -------------------------------------------------------------------------


def test_service_mail_carries_the_unsubscribe_link(renderer: Renderer) -> None:
    email = renderer.render("winback", "fr", sample_context("winback"), customer_id="c",
                            kind="service")
    assert email.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "Vous recevez ce rappel en lien avec un achat" in email.text
    assert "parce que vous avez déjà fait un achat" not in email.text


def test_rendered_email_says_which_files_and_formats(renderer: Renderer) -> None:
    email = renderer.render("winback", "fr-CA", sample_context("winback"), customer_id="c")
    assert (email.template, email.locale) == ("fr/winback", "fr_CA")
    assert renderer.render("winback", "de", sample_context("winback"),
                           customer_id="c").template == "en/winback"


def test_a_regional_folder_may_override_only_some_templates(tmp_path: Path) -> None:
    templates = _copy_templates(tmp_path)
    regional = templates / "fr_CA"
    regional.mkdir()
    shutil.copy(templates / "fr" / "strings.j2", regional / "strings.j2")
    for part in ("subject", "preheader", "html", "txt"):
        shutil.copy(templates / "fr" / f"winback.{part}.j2", regional / f"winback.{part}.j2")
    renderer = Renderer(templates, SHOP, SECRET)
    assert renderer.locales() == ["en", "fr", "fr_CA"]
    # What the night requires of every program: its languages, not the regional overrides.
    assert renderer.locales(regional=False) == ["en", "fr"]
    assert renderer.render("thank_you", "fr-CA", sample_context("thank_you"),
                           customer_id="c").template == "fr/thank_you"
    assert renderer.render("winback", "fr-CA", sample_context("winback"),
                           customer_id="c").template == "fr_CA/winback"


def test_check_uses_the_kind_the_template_is_written_for(renderer: Renderer) -> None:
    assert renderer.check("thank_you", ["en"]) == []
    with pytest.raises(TemplateError, match="no sample context"):
        sample_context("nope")
    assert renderer.check("nope", ["en"])[0].startswith("no sample context for template 'nope'")


def test_text_part_is_tidy(renderer: Renderer) -> None:
    ctx = sample_context("winback")
    ctx["customer"]["first_name"] = "Marie  \r\n\r\n\r\n\r\nx"
    text = renderer.render("winback", "en", ctx, customer_id="c").text
    assert "\r" not in text and "\n\n\n" not in text and text.endswith("\n")
    assert all(line == line.rstrip() for line in text.splitlines())
