"""The campaign form's vocabulary: audiences, offers, patterns, and the templates and languages
found in the template folder.

Imported by the tend_campaign DAG when Airflow parses it, so it imports nothing heavy (no
database, pandas or Jinja): a listing of the template folder is all it reads.
"""

from __future__ import annotations

from pathlib import Path

#: Audience kinds, with the label the form shows for each.
AUDIENCES: dict[str, str] = {
    "all": "All customers with marketing consent",
    "lapsed": "Lapsed customers (gone quiet)",
    "seasonal": "Seasonal window open",
    "checkup": "Check-up due",
    "loyalty_tier": "Loyalty tier (spend) reached",
    "category": "Bought a category in the last N days",
    "one_time": "One-time buyers",
    "upload": "Uploaded list of customer ids (CSV)",
}
OFFERS: dict[str, str] = {"none": "No offer", "percent": "Percent off (e.g. 15 %)",
                          "amount": "Amount off (e.g. $10)"}
TIERS = ("silver", "gold", "platinum")
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{1,59}$"
SEND_AT_PATTERN = r"^(now|([01][0-9]|2[0-3]):[0-5][0-9])$"
#: The templates whose words come from the form (their contract in
#: ``tend.messages.contracts`` says ``campaign=True``; a test keeps the two in step).
CAMPAIGN_TEMPLATES = ("newsletter",)
#: The form's words (per language: subject, preheader, headline, text) each campaign template
#: cannot do without beyond the subject every email needs; the others are
#: optional (the newsletter's headline defaults to the subject, an empty text leaves the
#: headline and each customer's products). The form marks only the subjects required, since
#: Airflow's form cannot make a field's need depend on another field: the first task
#: (``tend.campaigns.spec.parse_spec``) refuses a run whose chosen template misses one.
TEMPLATE_NEEDS: dict[str, tuple[str, ...]] = {"newsletter": ("subject",)}


def campaign_templates(templates_dir: Path) -> list[str]:
    """The campaign templates present in ``templates_dir`` (a subject in some language)."""
    found = {p.name.removesuffix(".subject.j2") for p in templates_dir.glob("*/*.subject.j2")}
    return sorted(n for n in CAMPAIGN_TEMPLATES if n in found)


def template_locales(templates_dir: Path) -> list[str]:
    """The languages the templates are written in (folders with a strings.j2, no regional
    ones): the form asks for a subject and words in each."""
    return sorted(p.parent.name for p in templates_dir.glob("*/strings.j2")
                  if "_" not in p.parent.name)
