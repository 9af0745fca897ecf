"""
### tend_programs — decide, claim and send tonight's messages

Scheduled on the asset `tend://customer_features` (after **tend_ingest**), planning the night
the last ingest brought the features to, unless the run gives its own *Night (as_of)*: a plain
"Trigger" plans the latest ingested night, and a logical date in the future is refused at the
trigger. `plan` detects signals, applies consent and suppressions, picks at most one message
per customer within caps, and claims the winners in the contact ledger; `send` is mapped over
the claimed batch ids (ids in XCom, never message lists), at most four at a time
(`TEND_SEND_TASKS_PER_RUN`) in the `tend_send` pool, through the backend named by the Variable
`tend_delivery` (SendGrid reads the connection `sendgrid_default`; the *SendGrid sandbox*
parameter, or `{"sendgrid_sandbox": true}` in the run's conf, switches SendGrid's sandbox mode
for that run); `summary` prints the night's totals, warnings first; `complaints_digest` emails
new complaints to `TEND_STAFF_EMAIL` (each once); `kpi` stores each program's results against
its holdout for the months still open (docs/results.md); `check`, after the summary, fails the
run when any of the night's messages failed, is unknown or still waits, so a green run is a
sent night.

Replay a night: `airflow dags test tend_programs 2026-11-20` (after tend_ingest for that date).
Rerunning a night sends nothing new: the ledger already holds every message it claimed.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from tend import config
from tend_airflow import tasks
from tend_airflow.assets import CUSTOMER_FEATURES
from tend_airflow.params import AS_OF, SENDGRID_SANDBOX, dag_params


@dag(
    dag_id="tend_programs",
    schedule=[CUSTOMER_FEATURES],
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["tend", "nightly"],
    params=dag_params(AS_OF, SENDGRID_SANDBOX),
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=2)},
)
def tend_programs() -> None:
    # TEND_HEAVY_QUEUE: the worker with the memory for it (docs/capacity.md).
    @task(multiple_outputs=False, queue=tasks.heavy_queue())
    def plan(**context) -> list[int]:
        return tasks.plan(context)

    # The pool bounds concurrent senders across every DAG run (create it once:
    # `airflow pools set tend_send 4 "Tend senders"`; `make airflow`/`make run` do), and
    # TEND_SEND_TASKS_PER_RUN (4) one night's.
    @task(pool="tend_send", max_active_tis_per_dagrun=config.send_tasks_per_run(),
          multiple_outputs=True, retry_delay=pendulum.duration(seconds=config.send_retry_delay()))
    def send(as_of: str, batch_id: int, **context) -> dict:
        return tasks.send(as_of, batch_id, context)

    # summary, kpi and check read plan's night themselves (tasks.planned_night): when plan
    # failed they end at once (summary says why, kpi skips, check fails without a retry)
    # instead of failing on the missing value and being retried for minutes.
    @task(trigger_rule="all_done")
    def summary(**context) -> None:
        tasks.summary(tasks.planned_night(context), context)

    @task(trigger_rule="all_done")
    def complaints_digest(**context) -> int:
        return tasks.complaints_digest(context)

    # After send whatever it did: the results count only what was sent.
    @task(trigger_rule="all_done")
    def kpi(**context) -> int:
        return tasks.kpi(tasks.planned_night(context))

    # Fails when a send failed or messages still wait: the run's colour is the night's
    # truth, and the summary before it is printed either way.
    # AirflowFailException: no retry (the ledger's state will not change by itself).
    @task(trigger_rule="all_done")
    def check(**context) -> None:
        tasks.night_check(tasks.planned_night(context), context)

    batch_ids = plan()
    night = batch_ids[tasks.AS_OF_XCOM]
    sent = send.partial(as_of=night).expand(batch_id=batch_ids)
    # check, complaints_digest and kpi are the run's last tasks: a failure of any of them
    # turns the run red (none hides another's behind an all_done trigger rule).
    # summary, kpi and check read plan's night (XCom): plan is their upstream too.
    told, checked, kpis = summary(), check(), kpi()
    [batch_ids, sent] >> told >> [complaints_digest(), checked]
    [batch_ids, sent] >> kpis
    batch_ids >> checked


tend_programs()
