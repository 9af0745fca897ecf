"""
### tend_programs — decide, claim and send tonight's messages

Scheduled on the asset `tend://customer_features` (after **tend_ingest**), taking `as_of` from
the asset event. `plan` detects signals, applies consent and suppressions, picks at most one
message per customer within caps, and claims the winners in the contact ledger; `send` runs one
mapped task per batch of claimed messages (batch ids in XCom, never message lists), at most four
at a time in the `tend_send` pool, through the backend named by the Variable `tend_delivery`
(SendGrid reads the connection `sendgrid_default`; `{"sendgrid_sandbox": true}` in the run's conf
switches SendGrid's sandbox mode for that run); `summary` prints the night's totals.

Replay a night: `airflow dags test tend_programs 2026-11-20` (after tend_ingest for that date).
Rerunning a night sends nothing new: the ledger already holds every message it claimed.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, dag, task

CUSTOMER_FEATURES = Asset(uri="tend://customer_features", name="tend_customer_features")


@dag(
    dag_id="tend_programs",
    schedule=[CUSTOMER_FEATURES],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["tend", "nightly"],
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=2)},
)
def tend_programs() -> None:
    @task
    def plan(**context) -> dict:
        from tend import config, messages
        from tend.config import ShopSettings
        from tend.programs.plan import plan_night
        from tend_airflow import as_of, run_id, shop_url, store_url

        settings = ShopSettings.from_env()
        result = plan_night(
            shop_url(), store_url(), as_of(context), run_id(context),
            settings=settings, renderer=messages.default_renderer(settings),
            secret=config.unsubscribe_secret(),
        )
        return {"as_of": result.as_of.isoformat(), "batches": result.batches}

    @task
    def batches(planned: dict) -> list[dict]:
        return [{"as_of": planned["as_of"], "batch_id": b} for b in planned["batches"]]

    # The pool bounds concurrent senders across every DAG run (create it once:
    # `airflow pools set tend_send 4 "Tend senders"`; `make airflow`/`make run` do).
    @task(pool="tend_send", max_active_tis_per_dagrun=4)
    def send(batch: dict, **context) -> dict:
        from tend_airflow import send_batch_task

        return send_batch_task(batch, context)

    @task(trigger_rule="all_done")
    def summary(planned: dict) -> None:
        import datetime as dt
        import logging

        from tend.reports import summary_lines
        from tend_airflow import store_url

        for line in summary_lines(store_url(), dt.date.fromisoformat(planned["as_of"])):
            logging.getLogger("tend").info(line)

    planned = plan()
    sent = send.expand(batch=batches(planned))
    sent >> summary(planned)


tend_programs()
