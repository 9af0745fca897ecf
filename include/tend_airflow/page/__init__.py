"""The Tend page in the Airflow UI: what was sent, to whom, and how it did (``app``), drawn
as HTML and inline SVG (``render``, ``svg``)."""
