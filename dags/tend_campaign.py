"""
### tend_campaign — a one-off campaign or newsletter, from the trigger form

Trigger it with **Trigger DAG** and fill the form (see docs/campaigns.md): a campaign *name*
(its identity: the same name never sends anyone a second copy), an *audience*, a *template*
(the newsletter among them), the subject and words per language, featured products, an
optional *offer*, *holdout*, *priority* against the nightly programs, when to send and at most
how many. **Dry run is on by default**: the run then reports the audience, every customer's
fate (no consent, suppressed, capped, held out...), three rendered samples (.eml and PNG) and
the estimated send time, and claims and sends nothing. *Proof to* sends staff a `[PROOF]`
copy of one message per language before anything else (a sample customer's words and products,
with inert unsubscribe links and a placeholder voucher code).

`check` refuses a form that cannot run and says which field to change; `plan` takes the very
path the nightly programs take (consent, suppressions, holdout, caps, one message per customer
per day, the claim in the contact ledger); `proof` mails staff; `send` is mapped over the
claimed batches exactly as in tend_programs; `finish` prints the campaign's totals and stores
its status (`sent`, `partly_sent`, `failed`, `nothing_to_send`; a dry run keeps the status of
an earlier real run).

From the command line: `airflow dags test tend_campaign -c '{"name": "winter-news",
"subject_en": "...", "subject_fr": "...", "dry_run": false}'`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from tend_airflow import tasks
from tend_airflow.params import campaign_params


@dag(
    dag_id="tend_campaign",
    dag_display_name="Tend campaign",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    doc_md=__doc__,
    tags=["tend", "campaign"],
    params=campaign_params(),
    default_args={"retries": 2, "retry_delay": pendulum.duration(minutes=2)},
)
def tend_campaign() -> None:
    @task
    def migrate_store() -> str:
        return tasks.migrate_store()

    @task
    def check(**context) -> str:
        return tasks.campaign_check(context)

    @task(multiple_outputs=False, queue=tasks.heavy_queue())
    def plan(**context) -> list[int]:
        return tasks.campaign_plan(context)

    @task
    def proof(**context) -> int:
        return tasks.campaign_proof(context)

    # The tend_send pool bounds concurrent senders across every DAG run, nightly ones too.
    @task(pool="tend_send", max_active_tis_per_dagrun=4, multiple_outputs=True)
    def send(as_of: str, batch_id: int, **context) -> dict:
        return tasks.campaign_send(as_of, batch_id, context)

    # Runs whatever happened upstream, and fails unless every message was sent: the run's
    # state is the campaign's.
    @task(trigger_rule="all_done")
    def finish(**context) -> None:
        tasks.campaign_finish(context)

    batch_ids = plan()
    day = batch_ids[tasks.AS_OF_XCOM]
    proofed = proof()
    migrate_store() >> check() >> batch_ids >> proofed
    sent = send.partial(as_of=day).expand(batch_id=batch_ids)
    proofed >> sent >> finish()


tend_campaign()
