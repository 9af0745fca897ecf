"""
### tend_ingest — fold the shop's new orders into customer features

Runs every night at 02:00 in the business timezone (`TEND_TIMEZONE`, default America/Toronto)
for the day that just ended. Pulls orders newer than the watermark from the `tend_shop`
connection, recomputes features only for customers with new orders, quarantines bad rows, and
emits the asset `tend://customer_features` with `{as_of, changed_customers}` so
**tend_programs** runs next.

Replay any night: `airflow dags test tend_ingest 2026-11-20`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Asset, CronDataIntervalTimetable, dag, task

from tend import config

CUSTOMER_FEATURES = Asset(uri="tend://customer_features", name="tend_customer_features")
TZ = config.business_timezone()


@dag(
    dag_id="tend_ingest",
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone=TZ),
    start_date=pendulum.datetime(2026, 1, 1, tz=TZ),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["tend", "nightly"],
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=5)},
)
def tend_ingest() -> None:
    @task
    def migrate_store() -> str:
        from tend.store import migrate
        from tend_airflow import store_url

        return migrate(store_url())

    @task(outlets=[CUSTOMER_FEATURES])
    def ingest_orders(**context) -> dict:
        from tend.features.ingest import run_ingest
        from tend_airflow import as_of, run_id, shop_url, store_url

        result = run_ingest(shop_url(), store_url(), as_of(context), run_id(context))
        extra = {"as_of": result.as_of.isoformat(), "changed_customers": result.changed_customers}
        context["outlet_events"][CUSTOMER_FEATURES].extra = extra
        return extra

    migrate_store() >> ingest_orders()


tend_ingest()
