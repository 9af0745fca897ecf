"""Every email template: passes its check in both locales, escapes, never breaks a header,
carries the compliance parts its kind needs, and the check catches what it promises to."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2
import markupsafe
import pytest
from _support import TEMPLATES, shop_settings

import tend.messages.loader as loader_module
import tend.messages.render as render_module
from tend.errors import TemplateError
from tend.messages.compliance import UNSUBSCRIBE_KINDS
from tend.messages.contracts import TEMPLATE_SPECS, sample_context, sample_contexts
from tend.messages.render import RenderedEmail, Renderer
from tend.programs.registry import load_registry

SECRET = "templates-test-secret"
SHOP = shop_settings(name="Maison Verte & Fils",
                     postal_address="1234, rue Saint-Denis\nMontréal (Québec)  H2X 3K8")
NAMES = sorted(TEMPLATE_SPECS)
LOCALES = ("en", "fr")
# Fields that are not free text: formats, identifiers and the signal's kind.
NOT_TEXT = {"currency", "kind", "locale", "sku", "url", "image_url", "email", "name_of_signal"}


@pytest.fixture(scope="module")
def renderer() -> Renderer:
    return Renderer(TEMPLATES, SHOP, SECRET)


def _render(renderer: Renderer, template: str, locale: str, ctx: dict[str, Any],
            customer_id: str = "cus_000142") -> RenderedEmail:
    return renderer.render(template, locale, ctx, customer_id=customer_id,
                           kind=TEMPLATE_SPECS[template].kind)


def _poison(value: Any, payload: Callable[[str], str], key: str = "", parent: str = "") -> Any:
    """Every free-text string in a context replaced by ``payload(original)``."""
    if isinstance(value, dict):
        return {k: _poison(v, payload, k, key) for k, v in value.items()}
    if isinstance(value, list):
        return [_poison(v, payload, key, parent) for v in value]
    if isinstance(value, str) and key not in NOT_TEXT and not (parent == "signal"
                                                               and key == "name"):
        return payload(value)
    return value


def _copy(tmp_path: Path) -> Path:
    target = tmp_path / "email"
    shutil.copytree(TEMPLATES, target)
    return target


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")


# --- the set of templates ------------------------------------------------------------------------


def test_every_program_in_the_registry_has_its_template() -> None:
    for program in load_registry().programs:
        assert program.template in TEMPLATE_SPECS, program.name
        for locale in LOCALES:
            for part in render_module.PARTS:
                assert (TEMPLATES / locale / f"{program.template}.{part}.j2").is_file()


def test_the_issue_s_programs_and_the_newsletter_are_all_there() -> None:
    assert set(NAMES) >= {"winback", "seasonal", "replenish", "checkup", "thank_you", "survey",
                          "loyalty", "cross_sell", "newsletter"}
    assert TEMPLATE_SPECS["thank_you"].kind == "transactional"
    assert TEMPLATE_SPECS["checkup"].kind == "service"


@pytest.mark.parametrize("template", NAMES)
def test_every_template_passes_the_check_in_both_locales(renderer: Renderer,
                                                         template: str) -> None:
    assert renderer.check(template, list(LOCALES)) == []


def test_the_cli_check_covers_every_template_on_disk(renderer: Renderer) -> None:
    assert renderer.templates() == NAMES
    assert renderer.locales() == ["en", "fr"]
    assert renderer.check_all() == {name: [] for name in NAMES}


@pytest.mark.parametrize("template", NAMES)
def test_sample_documents_every_variable(template: str) -> None:
    spec = TEMPLATE_SPECS[template]
    sample = sample_context(template)
    assert set(spec.required) <= set(sample)
    assert set(spec.optional) <= set(sample) | {"offer", "products"}
    assert spec.description and all(spec.required.values())


@pytest.mark.parametrize("template", NAMES)
def test_templates_render_with_only_their_required_variables(renderer: Renderer,
                                                             template: str) -> None:
    spec = TEMPLATE_SPECS[template]
    ctx = {k: v for k, v in sample_context(template).items() if k in spec.required}
    for locale in LOCALES:
        assert _render(renderer, template, locale, ctx).subject


# --- customer data is data: escaped in HTML, never a header --------------------------------------


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("template", NAMES)
def test_autoescape_holds_for_every_personalised_field(renderer: Renderer, template: str,
                                                       locale: str) -> None:
    script = "<script>alert(1)</script>"
    ctx = _poison(sample_context(template, locale), lambda s: f"{s} {script}")
    ctx["customer"]["first_name"] = script
    email = _render(renderer, template, locale, ctx)
    assert "<script" not in email.html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in email.html
    greeting = {"en": "Hi ", "fr": "Bonjour "}[locale]
    assert f"{greeting}&lt;script&gt;alert(1)&lt;/script&gt;," in email.html
    # Plain text is not HTML: the name arrives as typed.
    assert f"{greeting}{script}," in email.text


@pytest.mark.parametrize("locale", LOCALES)
@pytest.mark.parametrize("template", NAMES)
@pytest.mark.parametrize("breaker", ["\r\n", "\n", "\r", "\u2028", "\x85", "\x0b"])
def test_line_breaks_in_any_field_never_reach_a_header(renderer: Renderer, template: str,
                                                       locale: str, breaker: str) -> None:
    injected = f"{breaker}Bcc: victim@example.com{breaker}"
    ctx = _poison(sample_context(template, locale), lambda s: f"{s}{injected}")
    ctx["customer"]["first_name"] = f"Marie{injected}"
    email = _render(renderer, template, locale, ctx, customer_id=f"cus_1{injected}")
    header_values = [email.subject, email.preheader, *email.headers.values()]
    for value in [*header_values, *email.headers]:
        assert not re.search(r"[\r\n\x0b\x0c\x85\u2028\u2029]", value), repr(value)
        assert value == value.strip()
    if "first_name" in str(TEMPLATE_SPECS[template].required.get("customer")):
        assert not email.subject.startswith("Bcc")
    if TEMPLATE_SPECS[template].kind in UNSUBSCRIBE_KINDS:
        assert re.fullmatch(r"<https://tend\.maisonverte\.example/tend/unsubscribe/[\w.-]+"
                            r"(?:\?lang=[\w-]+)?>", email.headers["List-Unsubscribe"])


# --- compliance by kind ---------------------------------------------------------------------------


@pytest.mark.parametrize("template", NAMES)
def test_compliance_parts_match_the_kind(renderer: Renderer, template: str) -> None:
    for locale in LOCALES:
        email = _render(renderer, template, locale, sample_context(template, locale))
        if TEMPLATE_SPECS[template].kind in UNSUBSCRIBE_KINDS:
            url = email.headers["List-Unsubscribe"][1:-1]
            assert email.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
            assert url in email.html and url in email.text
            assert "/preferences/" in email.html and "/preferences/" in email.text
            assert "1234, rue Saint-Denis" in email.text
            assert "Maison Verte &amp; Fils" in email.html
        else:
            assert email.headers == {}
            assert "/unsubscribe/" not in email.html + email.text


def test_transactional_check_does_not_want_an_unsubscribe_link(renderer: Renderer) -> None:
    assert renderer.check("thank_you", list(LOCALES), kind="transactional") == []
    # ... and the same template sent as marketing gets the link from the layout.
    email = renderer.render("thank_you", "fr", sample_context("thank_you"), customer_id="c",
                            kind="marketing")
    assert "/unsubscribe/" in email.text


@pytest.mark.parametrize(("template", "kind"), [("cross_sell", "marketing"),
                                                 ("survey", "service")])
def test_check_fails_a_marketing_or_service_email_without_unsubscribe_link(
        tmp_path: Path, template: str, kind: str) -> None:
    templates = _copy(tmp_path)
    (templates / "fr" / f"{template}.txt.j2").write_text("Bonjour {{ customer.first_name }}\n")
    problems = Renderer(templates, SHOP, SECRET).check(template, list(LOCALES))
    assert len(problems) == 1
    assert problems[0].startswith("fr: ")
    assert f"fr/{template}.txt.j2 is a {kind} email but never shows" in problems[0]
    assert "unsubscribe_url" in problems[0]


def test_transactional_template_without_footer_link_passes(tmp_path: Path) -> None:
    templates = _copy(tmp_path)
    (templates / "fr" / "thank_you.txt.j2").write_text(
        "Merci {{ customer.first_name }}! {{ shop.name }}\n")
    assert Renderer(templates, SHOP, SECRET).check("thank_you", list(LOCALES)) == []


# --- the check names the template and the variable ------------------------------------------------


def test_check_names_template_and_missing_variable(tmp_path: Path) -> None:
    templates = _copy(tmp_path)
    _edit(templates / "fr" / "loyalty.html.j2", "{% block content %}",
          "{% block content %}{{ customer.nickname }}")
    problems = Renderer(templates, SHOP, SECRET).check("loyalty", list(LOCALES))
    assert len(problems) == 1
    assert re.search(r"fr/loyalty\.html\.j2 line \d+ uses \.nickname .* has no 'nickname'",
                     problems[0])


def test_check_names_a_missing_string_in_strings_j2(tmp_path: Path) -> None:
    templates = _copy(tmp_path)
    _edit(templates / "en" / "survey.txt.j2", "{% block content %}",
          "{% block content %}{{ t.bye }}")
    problems = Renderer(templates, SHOP, SECRET).check("survey", list(LOCALES))
    assert problems and "t.bye but en/strings.j2 does not define it" in problems[0]


@pytest.mark.parametrize("bad", ["   ", "None", "https://x.example/{{ id }}"])
def test_check_names_the_variable_of_a_broken_link(renderer: Renderer, bad: str) -> None:
    ctx = sample_context("checkup")
    ctx["products"][0]["url"] = bad
    problems = renderer.check("checkup", list(LOCALES), ctx)
    assert problems, bad
    assert re.search(r"template en/checkup\.html\.j2 \(in partials/product_card\.html\.j2 line "
                     r"\d+\) links to \{\{ product\.url \}\}, which is .*: a broken link; pass a "
                     r"full URL in 'product\.url'", problems[0]), problems[0]


@pytest.mark.parametrize("absent", ["", None])
def test_no_url_means_no_link_not_a_broken_one(renderer: Renderer, absent: str | None) -> None:
    ctx = sample_context("checkup")
    ctx["products"][0]["url"] = absent
    assert renderer.check("checkup", list(LOCALES), ctx) == []
    email = _render(renderer, "checkup", "en", ctx)
    assert "Book your appointment" not in email.html + email.text


def test_check_catches_a_static_broken_link(tmp_path: Path) -> None:
    templates = _copy(tmp_path)
    _edit(templates / "en" / "winback.html.j2", "{% block content %}",
          '{% block content %}<p><a href="">here</a></p>')
    problems = Renderer(templates, SHOP, SECRET).check("winback", list(LOCALES))
    assert problems and 'en/winback.html.j2 has a broken link href=""' in problems[0]


def test_check_catches_an_unrendered_placeholder(tmp_path: Path) -> None:
    templates = _copy(tmp_path)
    _edit(templates / "fr" / "winback.txt.j2", "{% block content %}",
          "{% block content %}Bonjour {{ '{{' }} customer.first_name }}\n")
    problems = Renderer(templates, SHOP, SECRET).check("winback", list(LOCALES))
    assert problems and "fr/winback.txt.j2 prints '{{'" in problems[0]


def test_check_catches_a_missing_text_part(tmp_path: Path) -> None:
    templates = _copy(tmp_path)
    (templates / "fr" / "survey.txt.j2").unlink()
    problems = Renderer(templates, SHOP, SECRET).check("survey", list(LOCALES))
    assert problems == [problems[0]]
    assert problems[0].startswith("fr: missing fr/survey.txt.j2")


def test_check_renders_every_variant(tmp_path: Path) -> None:
    """A bug in a branch only one variant reaches (the tier milestone) is still caught."""
    templates = _copy(tmp_path)
    _edit(templates / "en" / "loyalty.html.j2", "{{ signal.tier|title }}",
          "{{ signal.tierr|title }}")
    problems = Renderer(templates, SHOP, SECRET).check("loyalty", list(LOCALES))
    assert len(problems) == 1 and problems[0].startswith("en (tier): ")
    assert "'tierr'" in problems[0]


def test_check_catches_an_unguarded_optional_variable(tmp_path: Path) -> None:
    templates = _copy(tmp_path)
    _edit(templates / "fr" / "seasonal.txt.j2", "{% if offer is defined and offer %}",
          "{% if offer.code %}")
    problems = Renderer(templates, SHOP, SECRET).check("seasonal", list(LOCALES))
    assert problems and problems[0].startswith("fr (required variables only): ")


# --- CSS inlined once, at load --------------------------------------------------------------------


def test_css_is_inlined_into_every_element(renderer: Renderer) -> None:
    email = _render(renderer, "winback", "fr", sample_context("winback", "fr"))
    assert re.search(r'<p class="t-greeting" style="font-family: [^"]*font-weight: 600;',
                     email.html)
    assert '<td class="t-offer" bgcolor="#eef6f1" style="padding: 20px 24px;' in email.html
    # What cannot be inlined stays in <style>: dark mode and narrow screens.
    assert "@media (prefers-color-scheme: dark)" in email.html
    assert 'class="' in email.html  # classes kept for those rules
    assert len(re.findall(r'<(p|td|a)\b(?![^>]*style=)[^>]*class="t-', email.html)) == 0


def test_css_is_inlined_once_per_template_not_per_message(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    calls: list[str] = []
    real_fragment = loader_module.css_inline.inline_fragment
    real_inliner = loader_module.css_inline.CSSInliner

    class CountingInliner:
        def __init__(self, **kwargs: Any) -> None:
            self._inner = real_inliner(**kwargs)

        def inline(self, html: str) -> str:
            calls.append("document")
            return self._inner.inline(html)

    def counting_fragment(html: str, css: str, **kwargs: Any) -> str:
        calls.append("fragment")
        return real_fragment(html, css, **kwargs)

    monkeypatch.setattr(loader_module.css_inline, "inline_fragment", counting_fragment)
    monkeypatch.setattr(loader_module.css_inline, "CSSInliner", CountingInliner)
    fresh = Renderer(TEMPLATES, SHOP, SECRET)
    ctx = sample_context("winback")
    fresh.render("winback", "fr", ctx, customer_id="c0")
    after_first = len(calls)
    assert after_first >= 1
    for i in range(50):
        fresh.render("winback", "fr", ctx, customer_id=f"c{i}")
    assert len(calls) == after_first


def test_jinja_inside_table_structure_is_refused_at_load(tmp_path: Path) -> None:
    templates = _copy(tmp_path)
    _edit(templates / "partials" / "button.html.j2", '<table role="presentation"',
          '<table role="presentation">{{ label }}<tr><td></td></tr></table>\n<table')
    with pytest.raises(TemplateError, match=r"partials/button\.html\.j2 cannot be read safely "
                                            r"as HTML to inline its CSS"):
        Renderer(templates, SHOP, SECRET).render("winback", "en", sample_context("winback"),
                                                 customer_id="c")


# --- the fast path gives exactly what stock Jinja gives -------------------------------------------


@pytest.mark.parametrize("template", NAMES)
def test_fast_path_equals_stock_jinja(renderer: Renderer, template: str) -> None:
    reference = Renderer(TEMPLATES, SHOP, SECRET)
    reference.env.template_class = jinja2.Template  # stock escape()
    reference.env.context_class = jinja2.runtime.Context  # stock call()
    reference.env.getattr = (  # type: ignore[method-assign]
        jinja2.Environment.getattr.__get__(reference.env))  # stock attribute lookup
    assert reference.env.get_template("en/winback.html.j2").root_render_func.__globals__[
        "escape"] is markupsafe.escape
    for locale in ("en", "fr-CA"):
        for label, ctx in sample_contexts(template, locale=locale):
            fast = _render(renderer, template, locale, ctx)
            bundle = reference._bundle(template, locale)
            slow = reference._render_bundle(bundle, ctx, "cus_000142",
                                            TEMPLATE_SPECS[template].kind, fast=False)
            assert (fast.subject, fast.preheader, fast.html, fast.text, fast.headers) == (
                slow.subject, slow.preheader, slow.html, slow.text, slow.headers), label


# --- language -------------------------------------------------------------------------------------


@pytest.mark.parametrize("template", NAMES)
def test_french_is_french_and_english_is_english(renderer: Renderer, template: str) -> None:
    en = _render(renderer, template, "en", sample_context(template, "en"))
    fr = _render(renderer, template, "fr-CA", sample_context(template, "fr-CA"))
    assert '<html lang="en"' in en.html and '<html lang="fr-CA"' in fr.html
    assert re.search(r"\b(Hi|Hello)\b", en.text) and "Bonjour" in fr.text
    assert "courriel" in fr.text.lower() or "Merci" in fr.text
    assert "email" in en.text.lower()


def test_unknown_locale_falls_back_to_the_shop_default(renderer: Renderer) -> None:
    email = _render(renderer, "checkup", "de-DE", sample_context("checkup"))
    assert email.template == "en/checkup" and "March 12, 2027" in email.subject


@pytest.mark.parametrize(("label", "en_subject", "fr_subject"), [
    ("sample", "Marie, thank you for your 10th order!", "Marie, merci pour votre 10e commande!"),
    ("21st order", "Marie, thank you for your 21st order!",
     "Marie, merci pour votre 21e commande!"),
    ("tier", "Marie, welcome to Gold!", "Marie, bienvenue au niveau Gold!"),
    ("anniversary", "Marie, 5 years together already!", "Marie, déjà 5 ans ensemble!"),
    ("first anniversary, 1 order", "Marie, 1 year together already!",
     "Marie, déjà 1 an ensemble!"),
    ("no first name", "Thank you for your 10th order!", "Merci pour votre 10e commande!"),
])
def test_loyalty_milestones_with_plurals_and_ordinals(renderer: Renderer, label: str,
                                                      en_subject: str, fr_subject: str) -> None:
    for locale, expected in (("en", en_subject), ("fr", fr_subject)):
        ctx = dict(sample_contexts("loyalty", locale=locale))[label]
        assert _render(renderer, "loyalty", locale, ctx).subject == expected


def test_loyalty_facts_and_reason_lines(renderer: Renderer) -> None:
    fr = _render(renderer, "loyalty", "fr", sample_context("loyalty", "fr"))
    assert "Avec nous depuis mars 2021" in fr.text and "10 commandes" in fr.text
    one = dict(sample_contexts("loyalty", locale="en"))["first anniversary, 1 order"]
    assert "1 order\n" in _render(renderer, "loyalty", "en", one).text
    checkup = _render(renderer, "checkup", "fr", sample_context("checkup", "fr"))
    assert checkup.subject == ("Marie, votre entretien annuel de la chaudière arrive à "
                               "échéance le 12 mars 2027")
    en = _render(renderer, "checkup", "en", sample_context("checkup", "en"))
    assert "your annual boiler service is due on March 12, 2027" in en.text
