"""Text a marketing user types in the campaign form is rendered in a sandbox."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from _support import TEMPLATES

from tend.config import ShopSettings
from tend.errors import TemplateError
from tend.messages.contracts import sample_context
from tend.messages.render import Renderer
from tend.messages.user_text import USER_TEXT_MAX_CHARS, render_user_text

CTX = {
    "customer": {"first_name": "Marie", "orders_count": 4},
    "first_name": "Marie",
    "products": [{"name": "Poêlon en fonte", "price": Decimal("49.95")}],
    "shop": {"name": "Maison Verte"},
    "until": date(2027, 3, 1),
}


def test_ordinary_campaign_text_renders() -> None:
    text = render_user_text(
        "Bonjour {{ customer.first_name|default('à vous') }}! {{ products[0].name|upper }} à "
        "{{ products[0].price|money('CAD', 'fr') }} jusqu'au {{ until|date('fr') }}.", CTX)
    assert text == "Bonjour Marie! POÊLON EN FONTE à 49,95\xa0$ jusqu'au 1er mars 2027."


def test_fallback_for_a_missing_first_name() -> None:
    ctx = {**CTX, "customer": {"first_name": None}}
    assert render_user_text("Hi {{ customer.first_name or 'there' }}", ctx) == "Hi there"


def test_missing_variable_is_an_error_that_lists_what_exists() -> None:
    with pytest.raises(TemplateError, match=r"first_nme.*available: customer, first_name"):
        render_user_text("Hi {{ first_nme }}", CTX)


def test_syntax_error_says_where() -> None:
    with pytest.raises(TemplateError, match="syntax error on line 2"):
        render_user_text("Hi\n{{ customer.first_name ", CTX)


@pytest.mark.parametrize("source", [
    "{{ customer.__class__ }}",
    "{{ customer.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ products.__len__() }}",
    "{{ customer.items.__self__ }}",
    "{{ customer.__getitem__('first_name') }}",
    "{{ customer._private }}",
    "{{ '{0.__class__}'.format(customer) }}",
    "{{ '{0.__class__.__init__.__globals__}'.format_map({'0': customer}) }}",
    "{{ '{a.__class__.__init__.__globals__}'.format_map({'a': customer}) }}",
    "{% for c in ().__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ self.__init__.__globals__ }}",
    "{{ products.append(1) }}",
    "{{ customer.update({'first_name': 'x'}) }}",
    "{{ customer.clear() }}",
    "{{ customer.pop('first_name') }}",
])
def test_unsafe_attribute_access_and_mutation_are_refused(source: str) -> None:
    with pytest.raises(TemplateError) as info:
        render_user_text(source, CTX)
    assert "campaign text" in str(info.value)
    assert CTX["customer"] == {"first_name": "Marie", "orders_count": 4}
    assert CTX["products"] == [{"name": "Poêlon en fonte", "price": Decimal("49.95")}]


@pytest.mark.parametrize("source", [
    "{{ range(10) }}",                       # no globals at all
    "{{ lipsum() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ namespace() }}",
    "{{ dict(a=1) }}",
    "{{ 'x' * 1000000 }}",                   # memory bombs
    "{{ [1] * 1000000 }}",
    "{{ 9 ** 9 ** 9 }}",
    "{{ '%999999999s' % 'x' }}",
    "{{ 'x'|center(999999999) }}",           # filters outside the short list
    "{{ 'x'|format(1) }}",
    "{{ customer|attr('__class__') }}",
    "{{ 'a'|indent(999999999) }}",
])
def test_globals_big_allocations_and_unlisted_filters_are_refused(source: str) -> None:
    with pytest.raises(TemplateError, match="campaign text"):
        render_user_text(source, CTX)


def test_small_repetition_is_fine() -> None:
    assert render_user_text("{{ '-' * 10 }}", CTX) == "-" * 10


def test_size_limits() -> None:
    with pytest.raises(TemplateError, match="keep it under"):
        render_user_text("x" * (USER_TEXT_MAX_CHARS + 1), CTX)
    assert render_user_text("x" * USER_TEXT_MAX_CHARS, CTX) == "x" * USER_TEXT_MAX_CHARS


def test_single_line_for_subjects() -> None:
    subject = render_user_text("Hi {{ first_name }}\r\nBcc: x@y.example", {"first_name": "Ma\nrie"},
                               single_line=True)
    assert subject == "Hi Ma rie Bcc: x@y.example"


def test_user_text_is_escaped_where_an_html_template_shows_it() -> None:
    shop = ShopSettings(name="Maison Verte", postal_address="1 rue X", from_email="a@b.c",
                        from_name="M", reply_to=None, base_url="https://t.example/tend",
                        default_locale="en", currency="CAD")
    renderer = Renderer(TEMPLATES, shop, "s")
    ctx = sample_context("newsletter")
    typed = "Bonjour {{ customer.first_name }} <img src=x onerror=alert(1)>"
    ctx["newsletter"]["title"] = render_user_text(typed, ctx)
    ctx["newsletter"]["subject"] = render_user_text("Pour {{ customer.first_name }}\n!", ctx,
                                                    single_line=True)
    email = renderer.render("newsletter", "fr", ctx, customer_id="c")
    assert "<img src=x" not in email.html
    assert "Bonjour Marie &lt;img src=x onerror=alert(1)&gt;" in email.html
    assert email.subject == "Pour Marie !"


NAMELESS = {"customer": {"first_name": None, "last_name": "", "locale": "fr-CA",
                         "orders_count": 0, "member_since": ""}}


@pytest.mark.parametrize(("source", "expected"), [
    ('Hi {{ customer.first_name|default("there") }}!', "Hi there!"),
    ('Hi {{ customer.last_name|default("there") }}!', "Hi there!"),
    ("Bonjour {{ customer.first_name|upper }}", "Bonjour"),
    ("{{ customer.first_name|title|truncate(3) }}, hello", ", hello"),
    ("{{ customer.first_name[0] }}{{ customer.first_name.upper() }}.", "."),
    ("since {{ customer.member_since|date(customer.locale) }}!", "since !"),
    ("since {{ customer.member_since|date(customer.locale)|default('ever') }}", "since ever"),
    ("{{ customer.first_name|length }} {{ customer.orders_count }}", "0 0"),
    ("{% if customer.first_name %}named{% else %}nameless{% endif %}", "nameless"),
])
def test_a_value_the_customer_lacks_prints_nothing_and_takes_a_default(
        source: str, expected: str) -> None:
    """None or empty text is missing, not "None" and not an error: the same subject renders
    for every customer, and ``default`` works as the docstring says."""
    assert render_user_text(source, NAMELESS, single_line=True) == expected
    assert NAMELESS["customer"]["first_name"] is None  # the caller's context is unchanged


def test_a_missing_value_still_refuses_arithmetic_and_a_misspelt_field_is_an_error() -> None:
    with pytest.raises(TemplateError, match=r"customer\.first_name has no value"):
        render_user_text('{{ customer.first_name + "!" }}', NAMELESS)
    with pytest.raises(TemplateError, match="first_nme"):
        render_user_text("{{ customer.first_nme }}", NAMELESS)
    with pytest.raises(TemplateError, match="not allowed"):
        render_user_text("{{ customer.first_name.__class__ }}", NAMELESS)
