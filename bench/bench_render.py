"""Rendering throughput: messages rendered per second on one core (``make bench-render``).

Renders the real templates (every program's template and the newsletter, English and French)
for a stream of different customers, exactly as the send stage does: ``Renderer.render()``
with the template's sample context, a different customer (name, id, locale) per message, the
signed unsubscribe/preferences links and headers, subject and preheader on one line, HTML with
the stylesheet already inlined (done once, when each template is loaded: timed separately
below) and the tidied plain-text part.

The figure is messages per CPU-second of this one process (``time.process_time``), the best
and the median of several rounds, so other work on the machine does not count against it;
wall-clock figures are printed too. No assertion on time: run it, read it.

    .venv/bin/python bench/bench_render.py [--messages N] [--rounds R] [--template NAME]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import platform
import statistics
import sys
import time
from pathlib import Path

from tend.config import ShopSettings
from tend.messages.render import TEMPLATE_SPECS, Renderer, sample_context

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = ROOT / "templates" / "email"

SHOP = ShopSettings.from_env({
    "TEND_SHOP_ADDRESS": "1234, rue Saint-Denis\nMontréal (Québec)  H2X 3K8\nCanada",
    "TEND_FROM_EMAIL": "bonjour@maisonverte.example",
    "TEND_BASE_URL": "https://tend.maisonverte.example/tend",
    "TEND_WEBSITE_URL": "https://maisonverte.example",
})

FIRST_NAMES = ["Marie", "Jean-François", "Émilie", "Olivier", None, "Chloé", "Nathan", "Léa",
               "William", "Zoé", "Mohammed", "Sofia", "", "Gabriel", "Béatrice", "Liam"]
LOCALES = ["fr-CA", "en", "fr", "en-CA"]


def workload(n: int, templates: list[str]) -> list[tuple[str, str, dict, str, str]]:
    """n (template, locale, context, customer_id, kind) tuples, all different customers."""
    samples = {t: sample_context(t) for t in templates}
    jobs = []
    combos = itertools.cycle(itertools.product(templates, LOCALES))
    for i in range(n):
        template, locale = next(combos)
        ctx = copy.deepcopy(samples[template])
        customer_id = f"C{i:07d}"
        ctx["customer"].update(customer_id=customer_id,
                               first_name=FIRST_NAMES[i % len(FIRST_NAMES)],
                               email=f"customer{i}@example.com", locale=locale)
        if "offer" in ctx:
            ctx["offer"]["code"] = f"WB-{i:04X}-{(i * 7919) % 65536:04X}"
        jobs.append((template, locale, ctx, customer_id, TEMPLATE_SPECS[template].kind))
    return jobs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=20_000, help="messages per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--template", action="append", help="only these templates (repeatable)")
    args = p.parse_args(argv)
    templates = args.template or sorted(TEMPLATE_SPECS)

    # Load: compile every template in every locale, inlining the CSS once per template.
    t0, c0 = time.perf_counter(), time.process_time()
    renderer = Renderer(TEMPLATES, SHOP, "bench-secret-0123456789abcdef")
    for template in templates:
        for locale in ("en", "fr"):
            renderer.render(template, locale, sample_context(template), customer_id="warm-up",
                            kind=TEMPLATE_SPECS[template].kind)
    load_wall, load_cpu = time.perf_counter() - t0, time.process_time() - c0

    jobs = workload(args.messages, templates)
    sample = renderer.render(*jobs[0][:3], customer_id=jobs[0][3], kind=jobs[0][4])
    assert 'class="t-p" style="' in sample.html, "CSS is not inlined"
    rates_cpu, rates_wall, sizes = [], [], 0
    for _ in range(args.rounds):
        render = renderer.render
        w, c = time.perf_counter(), time.process_time()
        for template, locale, ctx, customer_id, kind in jobs:
            email = render(template, locale, ctx, customer_id=customer_id, kind=kind)
        cpu, wall = time.process_time() - c, time.perf_counter() - w
        rates_cpu.append(len(jobs) / cpu)
        rates_wall.append(len(jobs) / wall)
        sizes = len(email.html) + len(email.text)

    print(f"bench-render: {len(templates)} templates x en/fr, {len(jobs):,} different customers "
          f"per round, {args.rounds} rounds (Python {platform.python_version()}, "
          f"{platform.machine()})")
    print(f"  load (compile + inline CSS, {len(templates) * 2} template sets): "
          f"{load_wall * 1000:.0f} ms wall, {load_cpu * 1000:.0f} ms CPU, once per run")
    print(f"  messages/s per core (CPU time): best {max(rates_cpu):,.0f}, "
          f"median {statistics.median(rates_cpu):,.0f}")
    print(f"  messages/s wall clock:          best {max(rates_wall):,.0f}, "
          f"median {statistics.median(rates_wall):,.0f}")
    print(f"  last message: {sizes:,} characters (HTML + text)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
