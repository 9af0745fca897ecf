"""Campaigns: one-off sends that marketing starts from the tend_campaign trigger form.

Takes the form's values (``form`` is its vocabulary, ``spec`` checks them), picks the audience
from the stored features, signals, the shop's customers or an uploaded list (``audience``), and
runs it through the very path the nightly programs take — consent, suppressions, holdout, caps,
arbitration and the claim in the contact ledger (``tend.programs.plan.decide``) — then reports,
renders samples, sends proofs to staff, and leaves the claimed batches to the nightly send task
(``run``). A campaign is a program named ``campaign:NAME`` whose occurrence is NAME, so the same
name never sends anyone a second copy. Airflow-free: ``tend_airflow.tasks`` calls it.
"""
