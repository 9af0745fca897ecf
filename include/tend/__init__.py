"""Tend: customer contact programs for small and mid-size shops.

The domain core. It never imports airflow: DAG files in ``dags/`` are thin wiring that call
into this package, and the CLI (``tend``) calls the very same functions, so every night can be
run, replayed and tested without a scheduler.
"""

__version__ = "0.1.0"
