"""The context contract of every email template: what each one expects, with a realistic sample.

Each template under ``templates/email/{locale}/`` has one :class:`TemplateSpec` here. It says

* the message **kind** it is written for (``marketing``, ``service`` or ``transactional``;
  marketing and service messages must carry the unsubscribe link, transactional ones need not),
* the **variables** the pipeline must pass (``required``) and those it may leave out
  (``optional``; templates guard them with ``{% if x is defined and x %}``),
* a **sample** context, exactly as the pipeline passes it: ``tend templates check``, the nightly
  pre-flight check, the tests and ``tend preview`` render every template with it, and
* **variants**: overrides deep-merged into the sample to reach every branch (the three loyalty
  milestones, a product with a picture, a customer without a first name, ...).

Shared shapes (dates are ``datetime.date``, amounts ``Decimal``):

* ``customer``: ``customer_id``, ``first_name`` (may be None: templates fall back to a plain
  greeting), ``last_name``, ``email``, ``locale``; loyalty facts ``orders_count`` and
  ``member_since`` where a template says so.
* a product: ``sku``, ``name``, ``price``, ``currency``, ``url`` (None: shown without a link),
  ``image_url`` (None: shown without a picture).
* ``offer``: ``code`` (unique per customer), ``amount``, ``currency``, ``kind`` (``amount`` or
  ``percent``: 15 means 15 %), ``expires_on``.
* ``signal.reason`` is the detector's sentence for the shop's reports and ``tend why``; it is
  never shown to the customer. Templates say why the message is relevant in the customer's own
  language, from the signal's dates and the products (\"your boiler service is due on March 12\").
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal
from typing import Any

from tend.errors import TemplateError

__all__ = [
    "TEMPLATE_SPECS",
    "TemplateSpec",
    "merge",
    "sample_context",
    "sample_contexts",
    "template_spec",
    "without",
]

SHOP_URL = "https://maisonverte.example"


@dataclass(frozen=True)
class TemplateSpec:
    name: str
    kind: str
    description: str
    required: Mapping[str, str]
    optional: Mapping[str, str]
    sample: Mapping[str, Any]
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    by_language: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    """Overrides for a sample shown in another language (campaign text typed in French)."""
    campaign: bool = False
    """Its words come from the campaign form (``newsletter``: subject, preheader, title,
    intro), so the tend_campaign form offers it (``tend.campaigns.campaign_templates``)."""


# A Québec shop's catalogue in French, for samples shown in French (the pipeline passes the
# names the shop's catalogue has; these only make previews read naturally).
_NAMES_FR = {
    "TOM-6": "Plants de tomates, paquet de 6",
    "SOIL-25": "Terreau biologique, 25 L",
    "FLT-3": "Cartouches filtrantes, paquet de 3",
    "SVC-BOIL": "Entretien annuel de la chaudière",
    "SKL-26": "Poêlon en fonte, 26 cm",
    "OIL-SEA": "Huile de culottage, 250 ml",
    "SCR-CHN": "Tampon en cotte de mailles",
    "TEA-CHAI": "Chaï épicé, 100 g",
}


def _product(sku: str, name: str, price: str, *, url: bool = True,
             image: bool = False) -> dict[str, Any]:
    return {
        "sku": sku,
        "name": name,
        "price": Decimal(price),
        "currency": "CAD",
        "url": f"{SHOP_URL}/p/{sku.lower()}" if url else None,
        "image_url": f"{SHOP_URL}/img/{sku.lower()}.jpg" if image else None,
    }


def _customer(**extra: Any) -> dict[str, Any]:
    return {
        "customer_id": "cus_000142",
        "first_name": "Marie",
        "last_name": "Tremblay",
        "email": "marie.tremblay@example.com",
        "locale": "fr-CA",
        **extra,
    }


def _offer(code: str, amount: str, kind: str = "amount",
           expires: date = date(2027, 3, 12)) -> dict[str, Any]:
    return {"code": code, "amount": Decimal(amount), "currency": "CAD", "kind": kind,
            "expires_on": expires}


_CUSTOMER_DOC = "customer_id, first_name (None -> plain greeting), last_name, email, locale"
_PRODUCTS_DOC = ("list of products: sku, name, price (or None), currency, url (or None), "
                 "image_url (or None)")
_OFFER_DOC = "code (unique per customer), amount, currency, kind (amount | percent), expires_on"
_NO_NAME = {"customer": {"first_name": None}}


def _spec(*, name: str, kind: str, description: str, required: Mapping[str, str],
          optional: Mapping[str, str], sample: Mapping[str, Any],
          variants: Mapping[str, Mapping[str, Any]] | None = None,
          by_language: Mapping[str, Mapping[str, Any]] | None = None,
          customer: Mapping[str, Any] | None = None, customer_doc: str = "",
          campaign: bool = False) -> TemplateSpec:
    """A TemplateSpec for an email to one customer: every template needs ``customer`` (plus
    ``customer_doc``'s loyalty facts, sampled from ``customer``) and must read well without a
    first name, so those parts are the same for all and added here."""
    return TemplateSpec(
        name=name,
        kind=kind,
        description=description,
        required={"customer": _CUSTOMER_DOC + customer_doc, **required},
        optional=optional,
        sample={"customer": _customer(**(customer or {})), **sample},
        variants={**(variants or {}), "no first name": _NO_NAME},
        by_language=by_language or {},
        campaign=campaign,
    )


_SPECS: tuple[TemplateSpec, ...] = (
    _spec(
        name="winback",
        kind="marketing",
        description="a customer who used to buy has gone quiet; welcome them back with a voucher",
        required={
            "signal": "reason (reports only; the template shows no signal data)",
            "offer": _OFFER_DOC,
        },
        optional={"products": "products picked for this customer (complements of past buys)"},
        sample={
            "signal": {
                "name": "lapsed",
                "reason": "no order in 187 days after 4 orders (usual gap 41 days)",
                "days_since_last_order": 187,
                "orders_count": 4,
                "last_order_date": date(2026, 9, 6),
            },
            "offer": _offer("REVIENS-7Q2F", "10.00"),
        },
        variants={
            "percent offer, picks": {
                "offer": {"kind": "percent", "amount": Decimal("15")},
                "products": [_product("TOM-6", "Tomato seedlings, 6-pack", "12.99", image=True),
                             _product("SOIL-25", "Organic potting soil, 25 L", "14.50")],
            },
        },
    ),
    _spec(
        name="seasonal",
        kind="marketing",
        description="a customer who buys in the same window every year; it opens soon",
        required={
            "signal": "reason (reports only), window_start (date the customer's season "
                      "opens), window_end",
        },
        optional={"products": "what they bought last season (the first is named)",
                  "offer": _OFFER_DOC},
        sample={
            "signal": {
                "name": "seasonal",
                "reason": "ordered garden supplies in late March in 2025 and 2026",
                "window_start": date(2027, 3, 20),
                "window_end": date(2027, 4, 17),
            },
            "products": [_product("TOM-6", "Tomato seedlings, 6-pack", "12.99"),
                         _product("SOIL-25", "Organic potting soil, 25 L", "14.50")],
            "offer": _offer("PRINTEMPS-4KD8", "10", "percent", date(2027, 4, 30)),
        },
    ),
    _spec(
        name="replenish",
        kind="marketing",
        description="a consumable the customer buys is probably running out",
        required={
            "signal": "reason (reports only), last_bought (date), due_on (date)",
            "products": "the consumable(s) to reorder (at least one; the first is named)",
        },
        optional={"offer": _OFFER_DOC},
        sample={
            "signal": {
                "reason": "water filter cartridges usually last 60 days; last bought 54 days ago",
                "name": "replenish",
                "last_bought": date(2026, 9, 30),
                "due_on": date(2026, 11, 29),
            },
            "products": [_product("FLT-3", "Water filter cartridges, 3-pack", "34.95")],
        },
        variants={
            "offer, no link": {
                "offer": _offer("RECHARGE-2M7P", "5.00"),
                "products": [_product("FLT-3", "Water filter cartridges, 3-pack", "34.95",
                                      url=False)],
            },
        },
    ),
    _spec(
        name="checkup",
        kind="service",
        description="a service the customer bought (boiler, car, dental cleaning) is due again",
        required={
            "signal": "reason (reports only), due_on (date), last_bought (date of the last "
                      "service)",
            "products": "products[0] is the service; its url (or None) is where to book",
        },
        optional={},
        sample={
            "signal": {
                "reason": "annual boiler service bought 2026-03-12; due again in 12 months",
                "name": "checkup",
                "due_on": date(2027, 3, 12),
                "last_bought": date(2026, 3, 12),
            },
            "products": [_product("SVC-BOIL", "Annual boiler service", "149.00")],
        },
        variants={
            "nowhere to book": {
                "products": [_product("SVC-BOIL", "Annual boiler service", "149.00", url=False)],
            },
            "gone from the catalogue": {
                "products": [{"sku": "SVC-BOIL", "name": "Annual boiler service", "price": None,
                              "currency": None, "url": None, "image_url": None}],
            },
        },
    ),
    _spec(
        name="thank_you",
        kind="transactional",
        description="thank a customer for their first order (no promotion in it)",
        required={
            "order": "order_id, ordered_at (date), total, currency",
        },
        optional={"products": "what they bought (catalogue products; may be empty)"},
        sample={
            "order": {"order_id": "O-104233", "ordered_at": date(2026, 11, 22),
                      "total": Decimal("61.94"), "currency": "CAD"},
            "products": [_product("SKL-26", "Cast-iron skillet, 26 cm", "49.95"),
                         _product("OIL-SEA", "Seasoning oil, 250 ml", "11.99")],
        },
    ),
    _spec(
        name="survey",
        kind="service",
        description="ask how a purchase is working out, some weeks after it",
        required={
            "signal": "reason (reports only), order_date (date of the purchase)",
            "survey": "url: this message's own survey link, signed for the customer and the "
                      "message id, so each message gets one answer (the template adds "
                      "rating=1..5)",
        },
        optional={"products": "what they bought (the first is named; without it the message "
                              "speaks of 'your order')"},
        sample={
            "signal": {"name": "survey", "reason": "order of 2026-10-28, 26 days ago",
                       "order_date": date(2026, 10, 28)},
            "products": [_product("SKL-26", "Cast-iron skillet, 26 cm", "49.95")],
            "survey": {"url": "http://localhost:8090/survey/"
                              "Y3VzXzAwMDE0Mh85ZjJjMWE0YjdlM2Q0YzZhOGIwZDJlNWYxYTNjN2I5ZA."
                              "q2Vh8sT1dLkPzXcA9rGf2w"},
        },
    ),
    _spec(
        name="loyalty",
        customer={"orders_count": 10, "member_since": date(2021, 3, 8)},
        customer_doc=", orders_count, member_since (date)",
        kind="marketing",
        description="reward an Nth order, a spend tier reached, or a relationship anniversary",
        required={
            "signal": "name (loyalty_nth_order | loyalty_tier | anniversary), reason "
                      "(reports only), nth, tier, years (the ones a signal does not use may be "
                      "None)",
            "offer": _OFFER_DOC + " (the reward)",
        },
        optional={},
        sample={
            "signal": {
                "name": "loyalty_nth_order",
                "reason": "10th order placed on 2026-11-20",
                "nth": 10,
                "tier": None,
                "years": None,
            },
            "offer": _offer("MERCI-9XQ4", "15.00"),
        },
        variants={
            "tier": {"signal": {"name": "loyalty_tier", "tier": "gold",
                                "reason": "spent over $1,000 since 2021"}},
            "anniversary": {"signal": {"name": "anniversary", "years": 5,
                                       "reason": "first order on 2021-11-25"}},
            "first anniversary, 1 order": {
                "customer": {"orders_count": 1},
                "signal": {"name": "anniversary", "years": 1},
            },
            "21st order": {"signal": {"nth": 21}, "customer": {"orders_count": 21}},
            "another loyalty signal": {"signal": {"name": "loyalty"}},
            "no first order date": {"customer": {"member_since": None}},
        },
    ),
    _spec(
        name="cross_sell",
        kind="marketing",
        description="products that complement something the customer bought",
        required={
            "signal": "reason (reports only)",
            "purchased": "the product they bought (same shape as a product)",
            "products": "complementary products from the catalogue (at least one)",
        },
        optional={"offer": _OFFER_DOC},
        sample={
            "signal": {"reason": "bought SKL-26 on 2026-11-02; complements OIL-SEA, SCR-CHN"},
            "purchased": _product("SKL-26", "Cast-iron skillet, 26 cm", "49.95"),
            "products": [_product("OIL-SEA", "Seasoning oil, 250 ml", "11.99"),
                         _product("SCR-CHN", "Chain-mail scrubber", "18.00")],
        },
        variants={
            "pictures and offer": {
                "products": [_product("OIL-SEA", "Seasoning oil, 250 ml", "11.99", image=True),
                             _product("SCR-CHN", "Chain-mail scrubber", "18.00", image=True,
                                      url=False)],
                "offer": _offer("DUO-3HG5", "10", "percent"),
            },
        },
    ),
    _spec(
        name="newsletter",
        kind="marketing",
        campaign=True,
        description="the shop's newsletter; words from the campaign form, personal picks",
        required={
            "newsletter": "subject, preheader, title, intro (plain text; blank line = new "
                          "paragraph), articles: [{title, body, url (or None), image_url "
                          "(or None)}], all typed in the campaign form and rendered with "
                          "render_user_text first",
        },
        optional={"products": "products picked for this customer from the campaign's featured "
                              "SKUs (those closest to what they bought first), else from "
                              "their own purchase history",
                  "offer": _OFFER_DOC},
        sample={
            "newsletter": {
                "subject": "Winter is coming: our cosy picks",
                "preheader": "A few ideas for warm evenings, and what's new in the shop.",
                "title": "Cosy season at Maison Verte",
                "intro": "The first snow is here, and the shop smells of cinnamon.\n\n"
                         "Here are a few ideas for warm evenings at home.",
                "articles": [
                    {"title": "Bread in a cast-iron pot",
                     "body": "No kneading, four ingredients, one hot oven. Our favourite "
                             "winter recipe, step by step.",
                     "url": f"{SHOP_URL}/blog/no-knead-bread",
                     "image_url": None},
                    {"title": "Winterise your balcony garden",
                     "body": "Wrap, mulch and wait: how to keep perennials happy until "
                             "April.",
                     "url": None,
                     "image_url": None},
                ],
            },
            "products": [_product("SKL-26", "Cast-iron skillet, 26 cm", "49.95"),
                         _product("TEA-CHAI", "Spiced chai, 100 g", "9.50")],
        },
        variants={
            "article picture, offer": {
                "newsletter": {"articles": [{"title": "Our new tea corner", "body": "Come taste.",
                                             "url": f"{SHOP_URL}/tea",
                                             "image_url": f"{SHOP_URL}/img/tea.jpg"}]},
                "offer": _offer("HIVER-8NB2", "10.00"),
            },
        },
        by_language={"fr": {"newsletter": {
            "subject": "L'hiver arrive : nos idées douillettes",
            "preheader": "Quelques idées pour les soirées au chaud, et les nouveautés de la "
                         "boutique.",
            "title": "La saison douillette chez Maison Verte",
            "intro": "La première neige est arrivée et la boutique sent la cannelle.\n\n"
                     "Voici quelques idées pour les soirées au chaud.",
            "articles": [
                {"title": "Du pain cuit en cocotte de fonte",
                 "body": "Sans pétrissage, quatre ingrédients, un four bien chaud : notre recette "
                         "d'hiver préférée, étape par étape.",
                 "url": f"{SHOP_URL}/blogue/pain-sans-petrissage",
                 "image_url": None},
                {"title": "Préparer son jardin de balcon pour l'hiver",
                 "body": "Emballer, pailler et patienter : comment garder vos vivaces en forme "
                         "jusqu'en avril.",
                 "url": None,
                 "image_url": None},
            ],
        }}},
    ),
)

TEMPLATE_SPECS: dict[str, TemplateSpec] = {spec.name: spec for spec in _SPECS}


def template_spec(template: str) -> TemplateSpec:
    try:
        return TEMPLATE_SPECS[template]
    except KeyError:
        raise TemplateError(
            f"no sample context for template {template!r} (known: "
            f"{', '.join(sorted(TEMPLATE_SPECS))}); add a TemplateSpec for it to "
            "tend/messages/contracts.py",
            template=template,
        ) from None


def sample_context(template: str, locale: str | None = None) -> dict[str, Any]:
    """A realistic context for ``template``, exactly as the pipeline passes it (a fresh copy).

    With a French ``locale`` the shop's words (product names, the campaign's text) are the
    French ones, as a Québec shop would have them; the variables are the same.
    """
    spec = template_spec(template)
    ctx = copy.deepcopy(dict(spec.sample))
    if _language(locale) == "fr":
        ctx = _in_french(merge(ctx, spec.by_language.get("fr", {})))
    return ctx


def _in_french(value: Any) -> Any:
    if isinstance(value, dict):
        out = {k: _in_french(v) for k, v in value.items()}
        if "sku" in out and out["sku"] in _NAMES_FR and "name" in out:
            out["name"] = _NAMES_FR[out["sku"]]
        return out
    if isinstance(value, list):
        return [_in_french(v) for v in value]
    return value


def sample_contexts(template: str, base: Mapping[str, Any] | None = None,
                    locale: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The sample (or ``base``), each variant merged into it, and the sample without its
    optional variables: together they reach every branch of the template. Without ``base``,
    a French ``locale`` gives the French sample (see :func:`sample_context`)."""
    spec = template_spec(template)
    french = base is None and _language(locale) == "fr"
    root = copy.deepcopy(dict(base)) if base is not None else sample_context(template, locale)
    out = [("sample", root)]
    for label, overrides in spec.variants.items():
        variant = merge(root, overrides)
        out.append((label, _in_french(variant) if french else variant))
    if spec.optional:
        out.append(("required variables only", without(root, spec.optional)))
    return out


def _language(locale: str | None) -> str:
    return (locale or "").replace("-", "_").split("_")[0].lower()


def merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overrides`` into a copy of ``base`` (mappings merge, anything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def without(base: Mapping[str, Any], names: Mapping[str, Any] | tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``base`` without the top-level ``names``."""
    return {k: copy.deepcopy(v) for k, v in base.items() if k not in names}
