"""Features: one row of numbers per customer, folded from the shop's order history.

Takes the shop's clean orders and order lines (``tend.shop``) up to a night and gives the
per-customer features in the contact store, which the signals read back as a ``FeatureSet``:
``ingest`` runs a night (incremental after the watermark, or a full rebuild) and counts what was
quarantined; ``compute`` is the fast columnar engine (with ``customer_range``, ``sorting`` and
``year`` beneath it), whose output ``columns`` describes; ``store`` writes and reads the
stored feature rows, the products packed into each customer's row.
"""
