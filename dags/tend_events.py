"""
### tend_events — thank a first order within minutes

Scheduled on the asset `tend://order_events`, whose watcher (run by the Airflow triggerer)
subscribes to the Redis pub/sub channel `TEND_ORDER_EVENTS_CHANNEL` through the connection
`tend_order_events`. A shop, its platform's webhook relay, or `tend publish-order ORDER_ID`
publishes an "order placed" event there (docs/events.md); each run takes the events that
triggered it. `plan` reads each event's order from the shop by its id (bad or unknown events are
logged and skipped), then decides the programs marked `trigger: event` in programs.yaml (the
thank-you after a first order) for those customers only, under the nightly run's consent, caps,
holdouts and contact ledger; `send` sends the claimed batches in the `tend_send` pool, quiet
hours applied. The nightly run that later sees the same order finds the message already claimed.

Pub/sub keeps nothing while nobody listens: events published while the triggerer is down are
lost, and the nightly run (tend_ingest → tend_programs) stays the backstop.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from tend_airflow import tasks
from tend_airflow.assets import ORDER_EVENTS
from tend_airflow.params import SENDGRID_SANDBOX, dag_params


@dag(
    dag_id="tend_events",
    schedule=[ORDER_EVENTS],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    # One run at a time: a run's claims and its sends stay together, and events that arrive
    # meanwhile queue the next run.
    max_active_runs=1,
    doc_md=__doc__,
    tags=["tend", "events"],
    params=dag_params(SENDGRID_SANDBOX),
    default_args={"retries": 2, "retry_delay": pendulum.duration(seconds=30)},
)
def tend_events() -> None:
    @task(multiple_outputs=False)
    def plan(**context) -> list[int]:
        return tasks.order_events(context)

    @task(pool="tend_send", max_active_tis_per_dagrun=4, multiple_outputs=True)
    def send(as_of: str, batch_id: int, **context) -> dict:
        return tasks.send(as_of, batch_id, context)

    batch_ids = plan()
    send.partial(as_of=batch_ids[tasks.AS_OF_XCOM]).expand(batch_id=batch_ids)


tend_events()
