"""Programs and templates: check the registry and the templates, preview an email."""

from __future__ import annotations

import argparse
from pathlib import Path

from tend import config
from tend.cli.args import (
    checked_renderer,
    date,
    known_locale,
    positive,
    print_lines,
    ready_store,
    shop_arg,
    store_arg,
)


def register(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("programs", help="validate the program registry")
    sp.add_argument("action", choices=["check"], help="check: load and validate the registry")
    sp.add_argument("--file", type=Path,
                    help="the registry to check (default: TEND_PROGRAMS_FILE or programs.yaml)")
    sp.set_defaults(run=_programs)

    sp = sub.add_parser("templates", help="render every email template in every locale "
                                          "against its sample contexts")
    sp.add_argument("action", choices=["check"],
                    help="check: render every template and report what fails")
    sp.add_argument("--locale", action="append",
                    help="only this locale (repeatable; default: every locale directory)")
    sp.add_argument("--template", action="append", help="only this template (repeatable)")
    sp.set_defaults(run=_templates)

    sp = sub.add_parser("preview", help="render one program's email for one customer to "
                                        "HTML (and a PNG with --png)")
    shop_arg(sp)
    sp.add_argument("program", nargs="?",
                    help="a program in programs.yaml (or a template name); optional with "
                         "--would")
    sp.add_argument("--locale", help="default: the customer's locale, else the shop's")
    sp.add_argument("--customer", help="a customer id from the shop database: the message the "
                                       "program sent them (from the store), else the "
                                       "template's sample content for them (default: the "
                                       "template's sample customer)")
    sp.add_argument("--would", action="store_true",
                    help="with --customer: what the night would send them, decided as the "
                         "night decides (consent, caps, arbitration, holdout; nothing "
                         "claimed), or why nothing")
    store_arg(sp)
    sp.add_argument("--as-of", type=date, default=None,
                    help="the night to preview (order history and voucher expiry; "
                         "default: today; with --would, the night the store's features "
                         "are at)")
    sp.add_argument("--out", type=Path, help="folder for the files (default: var/previews)")
    sp.add_argument("--png", action="store_true", help="also a screenshot (headless Chromium)")
    sp.add_argument("--dark", action="store_true", help="screenshot in dark mode")
    sp.add_argument("--width", type=positive, default=640, help="screenshot width in px")
    sp.set_defaults(run=_preview)


def _programs(args: argparse.Namespace) -> None:
    from tend.logs import table
    from tend.programs.registry import load_registry, registry_path

    reg = load_registry(args.file)
    print(f"{args.file or registry_path()}: {len(reg.programs)} program(s) OK, "
          f"{len(reg.enabled())} enabled")
    print("caps (marketing): " + ", ".join(f"{c.messages} per {c.days} days"
                                            for c in reg.caps)
          + f"; send window {reg.send_window.start:%H:%M}-{reg.send_window.end:%H:%M} "
          "in the customer's timezone")
    print_lines(table(
        ["program", "signal", "kind", "priority", "cooldown", "holdout", "enabled"],
        [(p.name, ", ".join(p.signals), p.kind, p.priority, f"{p.cooldown_days}d",
          f"{p.holdout_share:.0%}", "yes" if p.enabled else "no") for p in reg.programs],
    ))


def _templates(args: argparse.Namespace) -> None:
    from tend.dev.preview import check_templates
    from tend.programs.registry import load_registry

    r = checked_renderer()
    for locale in args.locale or ():
        known_locale(locale, r.locales())
    check_templates(r, locales=args.locale, templates=args.template,
                    programs=[(p.name, p.template, p.kind) for p in load_registry().programs])


def _preview(args: argparse.Namespace) -> None:
    from tend.dev.preview import make_preview, make_would_preview
    from tend.errors import ConfigError

    settings = config.ShopSettings.from_env()
    r = checked_renderer(settings)
    known_locale(args.locale, r.locales())
    if args.would:
        if not args.customer:
            raise ConfigError("--would previews one customer's night: add --customer ID")
        print_lines(make_would_preview(
            args.program, renderer=r, settings=settings,
            out_dir=args.out or config.var_dir() / "previews", customer_id=args.customer,
            shop_url=config.shop_url(args.db), store_url=ready_store(args.store),
            as_of=args.as_of, locale=args.locale, png=args.png, width=args.width,
            dark=args.dark,
        ).lines())
        return
    if args.program is None:
        raise ConfigError("name the program (or template) to preview, e.g. `tend preview "
                          "winback`, or add --customer ID --would for what tonight would send")
    print_lines(make_preview(
        args.program, renderer=r, settings=settings,
        out_dir=args.out or config.var_dir() / "previews", locale=args.locale,
        customer_id=args.customer, shop_url=config.shop_url(args.db), as_of=args.as_of,
        png=args.png, width=args.width, dark=args.dark,
        store_url=config.store_url(args.store) if args.customer else None,
    ).lines())
