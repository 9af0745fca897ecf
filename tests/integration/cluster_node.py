"""The host name each process of a test's Airflow cluster gives Airflow.

In a deployment every worker is its own container with its own host name, and Airflow records
on each task instance the host that ran it. The processes of one test share a machine, so
`airflow_cluster` points Airflow's ``[core] hostname_callable`` here and gives each worker its
own name in ``CLUSTER_NODE_NAME``. Kept tiny: every Airflow process of the cluster imports it.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """The node's name from the cluster, else the machine's (the scheduler, the api-server)."""
    return os.environ.get("CLUSTER_NODE_NAME") or socket.getfqdn()
