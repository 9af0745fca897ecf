"""Results: what each program earns against its holdout (docs/results.md).

- ``attribution``: which contacts and which held-out customers were followed by an order in
  the program's window (the same rule for both groups);
- ``stats``: Newcombe's interval for a difference of rates, Welch's for revenue per customer,
  and when a holdout is too small to say anything;
- ``lift``: per program and month, the figures of ``tend report`` and of the ``kpi`` table;
- ``kpi``: the nightly task's body (the months whose windows may still be open, stored);
- ``report``: the report's table, csv and json.

Airflow-free, like the rest of the domain core.
"""
