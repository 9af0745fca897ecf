"""The campaign form: what parse_spec accepts, and the fix-it message for what it refuses."""

from __future__ import annotations

from typing import Any

import pytest
from _support import TEMPLATES

from tend.campaigns.form import CAMPAIGN_TEMPLATES, campaign_templates, template_locales
from tend.campaigns.spec import parse_spec
from tend.errors import ConfigError
from tend.messages.contracts import TEMPLATE_SPECS
from tend.programs.caps import SendWindow

GOOD = {"name": "spring-sale", "subject_en": "Spring!", "subject_fr": "Printemps !"}


def parse(**over: Any):  # type: ignore[no-untyped-def]
    return parse_spec(GOOD | over, templates=["newsletter"], locales=["en", "fr"],
                      quiet=SendWindow())


def test_the_form_lists_the_campaign_templates_and_languages_of_the_folder() -> None:
    assert set(CAMPAIGN_TEMPLATES) == {n for n, s in TEMPLATE_SPECS.items() if s.campaign}
    assert campaign_templates(TEMPLATES) == ["newsletter"]
    assert template_locales(TEMPLATES) == ["en", "fr"]


def test_defaults_are_safe() -> None:
    s = parse()
    assert s.dry_run is True and s.proof_to == () and s.offer is None
    assert s.audience == "all" and s.template == "newsletter" and s.send_at == "now"
    assert s.program == "campaign:spring-sale" and s.occurrence == "spring-sale"
    assert s.content["fr"].headline == "Printemps !"  # the subject when no headline


def test_only_the_name_and_subjects_are_needed() -> None:
    """What the form sends for fields left empty (null, or an empty string from a cleared
    text field) is no word at all: the newsletter needs only its subjects."""
    s = parse(preheader_en=None, text_en=None, headline_en=None, preheader_fr="", text_fr="  ")
    for loc in ("en", "fr"):
        c = s.content[loc]
        assert (c.preheader, c.text) == ("", "") and c.headline == c.subject


def test_a_template_that_needs_more_says_which_field(monkeypatch: pytest.MonkeyPatch) -> None:
    from tend.campaigns import spec

    monkeypatch.setitem(spec.TEMPLATE_NEEDS, "newsletter", ("subject", "text"))
    with pytest.raises(ConfigError, match=r"field 'text_en': the template 'newsletter' needs "
                                          r"a text for customers who read 'en': write it"):
        parse()
    assert parse(text_en="Hello", text_fr="Bonjour").content["fr"].text == "Bonjour"


def test_everything_set() -> None:
    s = parse(audience="category", audience_category="garden", audience_days=30,
              offer="percent", offer_amount=15, offer_valid_days=20, holdout_pct=10,
              send_at="10:30", max_recipients=500, dry_run=False,
              proof_to="a@shop.example, b@shop.example", featured_skus="SKL-26 TEA-CHAI")
    assert s.offer is not None and (s.offer.kind, s.offer.amount, s.offer.valid_days) == (
        "percent", 15.0, 20)
    assert s.offer.code_prefix == "SPRINGSA"
    assert s.proof_to == ("a@shop.example", "b@shop.example")
    assert s.featured_skus == ("SKL-26", "TEA-CHAI")
    window = s.send_window(SendWindow())
    assert window is not None and (window.start.isoformat(), window.end.isoformat()) == (
        "10:30:00", "11:30:00")
    assert s.as_program().holdout_share == 0.1


def test_text_that_fits_every_customer_is_accepted() -> None:
    """What a customer may lack prints as nothing, so these render for every customer and
    pass the check (a customer with no name gets "Hi there")."""
    s = parse(subject_en="{{ customer.first_name[0] }}, hello",
              subject_fr="Membre depuis {{ customer.member_since|date(customer.locale) }}",
              text_en='Hi {{ customer.first_name|default("there") }}!')
    assert s.content["en"].subject == "{{ customer.first_name[0] }}, hello"


@pytest.mark.parametrize(("over", "field", "advice"), [
    ({"name": "Spring Sale!"}, "name", "lower-case letters"),
    ({"name": None}, "name", "e.g."),
    ({"audience": "everyone"}, "audience", "pick one of"),
    ({"template": "winback"}, "template", "newsletter"),
    ({"subject_fr": ""}, "subject_fr", "needs a subject for customers who read 'fr': write it"),
    ({"subject_en": "Hi {{ customer.__class__ }}"}, "subject_en", "customer fields"),
    ({"text_en": "{{ order.total }}"}, "text_en", "customer fields"),
    # Fine for the shop's best-known customer, not for one with no name or no order yet.
    ({"subject_fr": "{{ customer.first_name + '!' }}"},
     "subject_fr", "for a customer with no name, no address or no order yet"),
    ({"headline_en": "{{ 10 // customer.orders_count }} orders"}, "headline_en",
     "for a customer with no name, no address or no order yet"),
    ({"audience": "category"}, "audience_category", "write one of"),
    ({"audience": "loyalty_tier", "audience_tier": "diamond"}, "audience_tier", "silver"),
    ({"audience": "upload"}, "audience_upload", "upload-audience"),
    ({"offer": "percent"}, "offer_amount", "between 0 and 100"),
    ({"offer": "percent", "offer_amount": 150}, "offer_amount", "15 means 15 %"),
    ({"offer": "amount", "offer_amount": 10, "offer_valid_days": 0}, "offer_valid_days",
     "from 1 to"),
    ({"holdout_pct": 80}, "holdout_pct", "from 0 to 50"),
    ({"send_at": "tomorrow"}, "send_at", "\"now\" or a local time"),
    ({"send_at": "22:00"}, "send_at", "quiet hours"),
    ({"max_recipients": 0}, "max_recipients", "whole number"),
    ({"proof_to": ["not-an-address"]}, "proof_to", "staff addresses"),
    ({"dry_run": "yes"}, "dry_run", "switch it on"),
    ({"featured_skus": [1, 2]}, "featured_skus", "list of SKUs"),
])
def test_invalid_input_is_refused_with_the_fix(over: dict[str, Any], field: str,
                                                advice: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse(**over)
    message = str(err.value)
    assert f"field {field!r}" in message
    assert advice in message
