"""
### tend_feedback — SendGrid's suppression lists, once a day

The backstop for SendGrid Event Webhook deliveries that never reached `tend serve` (down for
more than a day, a webhook key being rotated): reads SendGrid's bounce, block, spam report,
invalid email and global unsubscribe lists with the `sendgrid_default` connection's API key and
suppresses the shop's customers with those addresses (blocks are counted, not suppressed).
Runs at 01:30 in the business timezone (`TEND_TIMEZONE`), before the night's planning. Skipped
when the delivery backend is not SendGrid. Rerunning it changes nothing.

Same as `tend suppressions pull`; see docs/sendgrid-events.md.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import CronDataIntervalTimetable, dag, task

from tend import config
from tend_airflow import tasks

TZ = config.business_timezone()


@dag(
    dag_id="tend_feedback",
    schedule=CronDataIntervalTimetable("30 1 * * *", timezone=TZ),
    start_date=pendulum.datetime(2026, 1, 1, tz=TZ),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["tend", "daily"],
    default_args={"retries": 3, "retry_delay": pendulum.duration(minutes=15)},
)
def tend_feedback() -> None:
    @task
    def pull_suppressions() -> dict:
        return tasks.pull_suppressions()

    pull_suppressions()


tend_feedback()
