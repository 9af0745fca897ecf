"""Signals: who is worth contacting tonight, and why.

Each detector is a pure function over the feature table and returns rows of
(customer_id, signal, score, due_date, valid_until, reason, ...detail columns). The programs
stage turns signals into candidate messages; the detectors never know about programs.
"""

SIGNAL_COLUMNS = ["customer_id", "signal", "score", "due_date", "valid_until", "reason"]
