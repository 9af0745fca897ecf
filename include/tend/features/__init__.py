"""Features: one row of numbers per customer, folded from the shop's order history.

Takes order histories from ``tend.shop`` and gives the feature tables in the contact store that
the signals read. ``compute`` is the fast columnar engine, ``ingest`` runs a night (incremental
after the watermark, or a full rebuild) and writes and reads the stored tables.
"""
