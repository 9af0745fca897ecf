"""The bodies of the Tend DAGs' tasks, so the DAG files hold only the wiring.

Each body turns the task context into the plain values ``tend`` takes (through
``tend_airflow.connections``, ``runs`` and ``delivery``) and hands back what the next task maps
or reads: batch ids and dates in XCom, never message lists. The DAG files import this module
when they are parsed, so each body imports the domain core it needs only when it runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tend import config
from tend_airflow import runs
from tend_airflow.connections import shop_url, store_url
from tend_airflow.delivery import delivery_backend

if TYPE_CHECKING:
    from tend.campaigns.spec import CampaignSpec
    from tend.programs.caps import SendWindow

log = logging.getLogger("tend")

AS_OF_XCOM = "as_of"
#: The XCom key under which ``plan`` and ``send`` leave their seconds per step (the task log
#: prints them too): what a scaling measurement adds up (bench/bench_scale.py).
TIMINGS_XCOM = "timings"


def heavy_queue() -> str:
    """``TEND_HEAVY_QUEUE``: the Celery queue of the tasks whose memory grows with the
    number of customers, tend_ingest's ``ingest_orders`` and the ``plan`` of tend_programs and
    tend_campaign (docs/capacity.md), so that only a worker sized for them takes them
    (``celery worker --queues NAME``). Read when the DAG files are parsed; unset, Airflow's
    default queue (``[operators] default_queue``), which every worker consumes."""
    from airflow.sdk import conf

    name = (os.environ.get("TEND_HEAVY_QUEUE") or "").strip()
    return name or conf.get("operators", "default_queue")


def migrate_store() -> str:
    """Bring the store's schema to the newest revision; the revision it is at."""
    from tend.store import migrate

    return migrate(store_url())


@contextmanager
def tend_errors_fail_at_once() -> Iterator[None]:
    """Tend's own errors (bad input, a night not ingested, a template that fails its check)
    fail the task at once, without retries, with Tend's one-line message as the task's error:
    a retry cannot fix them, and the line must not sit under a long traceback."""
    from airflow.sdk.exceptions import AirflowFailException

    from tend.errors import DeliveryError, LedgerError, TendError

    try:
        yield
    except (DeliveryError, LedgerError):
        raise  # a provider's trouble or two writers racing may pass: Airflow retries
    except (TendError, ValueError) as exc:
        raise AirflowFailException(str(exc)) from exc


def ingest(context: Mapping[str, Any]) -> dict[str, Any]:
    """Fold the night's new orders into the features; tell tend_programs which night it was."""
    from tend.features.ingest import run_ingest
    from tend_airflow.assets import CUSTOMER_FEATURES

    with tend_errors_fail_at_once():
        result = run_ingest(shop_url(), store_url(), runs.as_of(context),
                            runs.run_id(context))
    extra = {"as_of": result.as_of.isoformat(), "changed_customers": result.changed_customers}
    context["outlet_events"][CUSTOMER_FEATURES].extra = extra
    return extra


def plan(context: Mapping[str, Any]) -> list[int]:
    """Decide and claim the night's messages; the claimed batch ids.

    ``send`` is mapped over them, and Airflow maps only over a task's return value, so the
    night goes to XCom under its own key, ``as_of``, for ``send`` and ``summary``. Tend's own
    errors (a night not ingested, a template that fails its check) fail the task at once with
    their one-line message: a retry cannot fix them.
    """
    from tend import messages
    from tend.config import ShopSettings
    from tend.features.store import store_as_of
    from tend.programs.plan import plan_night
    from tend.store import ledger, nights
    from tend.store.db import connect

    settings = ShopSettings.from_env()
    with tend_errors_fail_at_once():
        night, named = runs.program_night(context, store_as_of(store_url()))
        with connect(store_url()).connect() as conn:
            planned = ledger.nights_decided(conn, named)
        missed = sorted(set(named) - planned)
        for other in missed:
            log.warning("night %s was ingested but a later ingest (%s) overtook it before it "
                        "was planned; the store keeps one night's features: replay it with "
                        "tend_ingest then tend_programs for %s", other, night, other)
        result = plan_night(
            shop_url(), store_url(), night, runs.run_id(context),
            settings=settings, renderer=messages.default_renderer(settings),
            secret=config.unsubscribe_secret(),
        )
        # Recorded for the night's summary and the Tend page (tend.store.nights): only older
        # nights, since a newer one named by a leftover event is no gap of this night's.
        older = [d for d in missed if d < result.as_of]
        if older:
            with connect(store_url()).begin() as conn:
                nights.record(conn, older, overtaken_by=result.as_of,
                              run_id=runs.run_id(context), at=ledger.now())
    context["ti"].xcom_push(AS_OF_XCOM, result.as_of.isoformat())
    context["ti"].xcom_push(TIMINGS_XCOM, result.timings)
    return list(result.batches)


def order_events(context: Mapping[str, Any]) -> list[int]:
    """Decide and claim the event-driven programs for the orders of the triggering events; the
    claimed batch ids (the night, today in UTC, goes to XCom as ``plan``'s does)."""
    from tend import messages
    from tend.config import ShopSettings
    from tend.listen.orders import plan_events
    from tend_airflow.assets import ORDER_EVENTS

    try:
        events = context["triggering_asset_events"][ORDER_EVENTS]
    except KeyError:  # a run triggered by hand: no events, nothing to decide
        events = []
    payloads = [(event.extra or {}).get("payload") for event in events]
    settings = ShopSettings.from_env()
    result = plan_events(shop_url(), store_url(), payloads, runs.run_id(context),
                         settings=settings, renderer=messages.default_renderer(settings),
                         secret=config.unsubscribe_secret())
    context["ti"].xcom_push(AS_OF_XCOM, result.as_of.isoformat())
    return list(result.batches)


def send(as_of: str, batch_id: int, context: Mapping[str, Any], *,
         send_window: SendWindow | None = None) -> dict[str, int]:
    """Send one claimed batch; its counts by status.

    Rejected credentials fail the task without retries (a retry cannot fix a key); any other
    error fails it normally, and Airflow's retry sends what is still claimed. ``send_window``:
    when messages may be delivered (default: the registry's quiet hours). Messages a backend
    that delivers at once (SMTP) must not take before their opening stay claimed, and the task
    is rescheduled for the first opening (up_for_reschedule: no retry spent, no worker slot
    held), where it sends them; the night's ``check`` waits for it.
    """
    from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException

    from tend import messages
    from tend.config import ShopSettings
    from tend.delivery.engine import send_batch
    from tend.errors import DeliveryAuthError

    settings = ShopSettings.from_env()
    backend = delivery_backend(context)
    try:
        result = send_batch(store_url(), dt.date.fromisoformat(str(as_of)), int(batch_id),
                            backend=backend, renderer=messages.default_renderer(settings),
                            settings=settings, send_window=send_window)
    except DeliveryAuthError as exc:
        raise AirflowFailException(str(exc)) from exc
    finally:
        backend.close()
    context["ti"].xcom_push(TIMINGS_XCOM, {"seconds": result.seconds, **result.timings})
    if result.held and result.held_until is not None:
        log.info("batch %s: rescheduled for %s UTC, when quiet hours end for the first of its "
                 "%s held message(s)", batch_id, f"{result.held_until:%Y-%m-%d %H:%M}",
                 f"{result.held:,}")
        raise AirflowRescheduleException(result.held_until)
    return dict(result.counts)


#: What the tasks after ``plan`` say when it never finished: they run anyway (trigger rule
#: all_done, so a failed send still gets its summary) and must end at once, not be retried.
NOT_PLANNED = ("plan did not finish, so nothing was planned or sent by this run: the plan "
               "task's log ends with the reason; fix it, then clear plan (or trigger the "
               "night again)")


def planned_night(context: Mapping[str, Any]) -> str | None:
    """The night ``plan`` pushed for this run, or None when plan never finished.

    The tasks after plan read it themselves rather than taking it as an XComArg: Airflow
    resolves an XComArg before the task's code runs, so a failed plan made them fail on the
    missing value and be retried for minutes before the run could turn red."""
    night = context["ti"].xcom_pull(task_ids="plan", key=AS_OF_XCOM)
    return str(night) if night else None


def summary(as_of: str | None, context: Mapping[str, Any] | None = None) -> None:
    """Log the night's totals, warnings first: decisions by fate, messages by status."""
    from tend.reports import summary_lines

    if as_of is None:
        log.error("WARNING: %s", NOT_PLANNED)
        return
    run = runs.run_id(context) if context else None
    for line in summary_lines(store_url(), dt.date.fromisoformat(as_of), run,
                              rehearsal=rehearsal(context)):
        (log.warning if line.startswith("WARNING") else log.info)(line)


def rehearsal(context: Mapping[str, Any] | None) -> bool:
    """Whether this run sends through SendGrid's sandbox (validated, never delivered); False
    outside a task (no run to ask), and when the delivery settings cannot be read: the send
    tasks have failed on those already, and the summary must still be printed."""
    from tend.errors import TendError
    from tend_airflow.delivery import sandboxed

    if context is None:
        return False
    try:
        return sandboxed(context)
    except TendError as exc:
        log.warning("cannot tell whether this run was a SendGrid rehearsal: %s", exc)
        return False


def night_check(as_of: str | None, context: Mapping[str, Any] | None = None) -> None:
    """The run's last word: fail it (after the summary is printed) when plan did not finish
    or any of the night's messages failed, is unknown or still waits, so a run that did not
    send shows red.

    A rehearsal (SendGrid sandbox) ends red too, saying so: its messages are back to
    'claimed', so the night is not sent, and a send task that failed would leave them
    'claimed' just the same; only a real run can show green."""
    from airflow.sdk.exceptions import AirflowFailException

    from tend.reports import night_problems

    if as_of is None:
        raise AirflowFailException(NOT_PLANNED)
    problems = night_problems(store_url(), dt.date.fromisoformat(as_of))
    if problems and rehearsal(context):
        raise AirflowFailException(
            f"night {as_of} was a rehearsal (SendGrid sandbox): nothing was delivered, "
            f"{', '.join(problems)} message(s); each send task's log says what SendGrid "
            "validated or refused, and a real run of this night sends them")
    if problems:
        raise AirflowFailException(
            f"night {as_of}: {', '.join(problems)} message(s); see the summary task's log")
    log.info("night %s: every claimed message was sent", as_of)


def complaints_digest(context: Mapping[str, Any] | None = None) -> int:
    """Email the staff the customer complaints opened since the last digest (each once); a
    shop without ``TEND_STAFF_EMAIL`` gets a warning in the log, not a failed night."""
    from tend.config import ShopSettings
    from tend.errors import ConfigError
    from tend.reports import send_complaint_digest

    try:
        staff = config.staff_email()
    except ConfigError as exc:
        log.warning("complaints digest not sent: %s", exc)
        return 0
    backend = delivery_backend(context)
    try:
        sent = send_complaint_digest(store_url(), backend=backend,
                                     settings=ShopSettings.from_env(), staff_email=staff)
    finally:
        backend.close()
    log.info("complaints digest: %d complaint(s) sent to staff", sent)
    return sent


def pull_suppressions() -> dict[str, int]:
    """The daily backstop for lost webhook deliveries: SendGrid's suppression lists into the
    store. Skipped when the delivery backend is not SendGrid (there are no lists to read)."""
    from airflow.sdk.exceptions import AirflowSkipException

    from tend.listen.pull import pull_suppressions as pull
    from tend_airflow.delivery import delivery_name, sendgrid_settings

    if delivery_name() != "sendgrid":
        raise AirflowSkipException("the delivery backend is not sendgrid: no lists to pull")
    result = pull(sendgrid_settings(), store_url(), shop_url())
    return {f"{name}_customers": n for name, n in result.matched.items()}


def kpi(as_of: str | None) -> int:
    """Recompute the results of the months still open and store them (the ``kpi`` table);
    skipped when plan did not finish (``check`` turns the run red)."""
    from airflow.sdk.exceptions import AirflowSkipException

    from tend.results.kpi import store_kpis

    if as_of is None:
        raise AirflowSkipException(NOT_PLANNED)
    return store_kpis(shop_url(), store_url(), dt.date.fromisoformat(as_of))


# -- tend_campaign ------------------------------------------------------------------------------


def _campaign(context: Mapping[str, Any]) -> CampaignSpec:
    """The run's form as a CampaignSpec; bad input fails the task at once, without retries,
    with the message that says what to change (a retry cannot fix a form)."""
    from airflow.sdk.exceptions import AirflowFailException

    from tend.campaigns.form import campaign_templates, template_locales
    from tend.campaigns.spec import parse_spec
    from tend.errors import ConfigError
    from tend.programs.registry import load_registry

    conf = getattr(context.get("dag_run"), "conf", None) or {}
    params = {**(context.get("params") or {}), **conf}
    folder = config.templates_dir()
    try:
        return parse_spec(params, templates=campaign_templates(folder),
                          locales=template_locales(folder), quiet=load_registry().send_window)
    except ConfigError as exc:
        raise AirflowFailException(str(exc)) from exc


def campaign_check(context: Mapping[str, Any]) -> str:
    """Refuse a form that cannot run, before anything is read or claimed; the campaign name.

    A real run through SendGrid's sandbox mode is refused too: SendGrid accepts every message
    and delivers none, so the run would claim the campaign's audience (counting in their caps)
    and deliver nothing; a rehearsal is what dry_run is for.
    """
    from airflow.sdk.exceptions import AirflowFailException

    from tend.campaigns.run import check_campaign
    from tend.errors import DataError
    from tend_airflow.delivery import sandboxed

    spec = _campaign(context)
    if not spec.dry_run and sandboxed(context):
        raise AirflowFailException(
            "campaign form, field 'dry_run': SendGrid is in sandbox mode (the sendgrid_default "
            "connection or this run), which delivers nothing, so this run would claim the "
            "audience and send none of it; switch dry_run on for a rehearsal, or sandbox mode "
            "off to send")
    try:
        check_campaign(spec, shop_url=shop_url(), store_url=store_url())
    except DataError as exc:
        raise AirflowFailException(str(exc)) from exc
    log.info("campaign %s: the form is valid (%s, audience %s, %s)", spec.name, spec.template,
             spec.audience, "dry run" if spec.dry_run else "REAL RUN")
    return spec.name


def campaign_plan(context: Mapping[str, Any]) -> list[int]:
    """Select, decide and (unless a dry run) claim; the campaign's batch ids to send.

    The campaign's day goes to XCom under ``as_of``, as ``plan`` does for the night.
    """
    from tend import messages
    from tend.campaigns.run import plan_campaign
    from tend.config import ShopSettings
    from tend.programs.registry import load_registry

    spec = _campaign(context)
    settings = ShopSettings.from_env()
    day = runs.as_of(context)
    report = plan_campaign(
        spec, shop_url=shop_url(), store_url=store_url(), as_of=day, run_id=runs.run_id(context),
        settings=settings, renderer=messages.default_renderer(settings),
        secret=config.unsubscribe_secret(), registry=load_registry(),
        samples_dir=config.var_dir() / "campaigns", png=True)
    context["ti"].xcom_push(AS_OF_XCOM, day.isoformat())
    return [] if spec.dry_run else list(report.batches)


def campaign_proof(context: Mapping[str, Any]) -> int:
    """A [PROOF] copy of each sample to the form's staff addresses, before any customer's."""
    from tend import messages
    from tend.campaigns.run import send_proofs
    from tend.config import ShopSettings

    spec = _campaign(context)
    if not spec.proof_to:
        log.info("campaign %s: no proof address in the form; no proof sent", spec.name)
        return 0
    settings = ShopSettings.from_env()
    backend = delivery_backend(context)
    try:
        return send_proofs(spec.name, store_url(), to=spec.proof_to, backend=backend,
                           renderer=messages.default_renderer(settings), settings=settings,
                           run_id=runs.run_id(context))
    finally:
        backend.close()


def campaign_send(as_of: str, batch_id: int, context: Mapping[str, Any]) -> dict[str, int]:
    """``send``, delivering at the form's local time when it gave one (quiet hours always)."""
    from tend.programs.registry import load_registry

    return send(as_of, batch_id, context,
                send_window=_campaign(context).send_window(load_registry().send_window))


def campaign_finish(context: Mapping[str, Any]) -> None:
    """Log the campaign's totals by status and store its final status; fail (without retries:
    the sends already had theirs) when this run planned nothing or did not send everything,
    so the run's state tells the truth."""
    from airflow.sdk.exceptions import AirflowFailException

    from tend.campaigns.run import finish
    from tend.errors import DataError

    try:
        finish(_campaign(context).name, store_url(), runs.run_id(context))
    except DataError as exc:
        raise AirflowFailException(str(exc)) from exc
