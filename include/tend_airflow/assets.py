"""The assets the Tend DAGs hand each other.

tend_ingest emits ``CUSTOMER_FEATURES`` with ``{as_of, changed_customers}`` when it has folded a
night's orders into the features; tend_programs is scheduled on it. One object, imported by both
DAG files, so producer and consumer cannot drift apart.
"""

from __future__ import annotations

from airflow.sdk import Asset

CUSTOMER_FEATURES = Asset(uri="tend://customer_features", name="tend_customer_features")
