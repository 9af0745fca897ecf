"""
### tend_ingest — fold the shop's new orders into customer features

Runs every night at 02:00 in the business timezone (`TEND_TIMEZONE`, default America/Toronto)
for the day that just ended. Pulls orders newer than the watermark from the `tend_shop`
connection, recomputes features only for customers with new orders, quarantines bad rows, and
emits the asset `tend://customer_features` with `{as_of, changed_customers}` so
**tend_programs** runs next.

Replay any night: `airflow dags test tend_ingest 2026-11-20`, or trigger it with the
*Night (as_of)* parameter.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from tend import config
from tend_airflow import tasks
from tend_airflow.assets import CUSTOMER_FEATURES
from tend_airflow.params import AS_OF, dag_params

TZ = config.business_timezone()


@dag(
    dag_id="tend_ingest",
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone=TZ),
    start_date=pendulum.datetime(2026, 1, 1, tz=TZ),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["tend", "nightly"],
    params=dag_params(AS_OF),
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=5)},
)
def tend_ingest() -> None:
    @task
    def migrate_store() -> str:
        return tasks.migrate_store()

    # TEND_HEAVY_QUEUE: the worker with the memory for it (docs/capacity.md).
    @task(outlets=[CUSTOMER_FEATURES], multiple_outputs=True, queue=tasks.heavy_queue())
    def ingest_orders(**context) -> dict:
        return tasks.ingest(context)

    migrate_store() >> ingest_orders()


tend_ingest()
