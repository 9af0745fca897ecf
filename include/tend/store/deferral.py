"""The deferred table: candidates a cap or a cooldown blocked tonight that stay valid for a
later night. The planner decides who waits; this module only stores and forgets them."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from sqlalchemy import Connection, select

from tend.store import bulk
from tend.store.tables import deferred

#: What identifies a waiting candidate.
KEY = ("customer_id", "program", "occurrence")


def read_all(conn: Connection) -> pd.DataFrame:
    """Every waiting candidate, as stored (dates as the driver returns them)."""
    cols = [c.name for c in deferred.columns]
    fetched = conn.exec_driver_sql(f"SELECT {', '.join(cols)} FROM {deferred.name}").all()
    # Column by column: a frame built from row objects would probe every row.
    columns = zip(*fetched, strict=True) if fetched else ([] for _ in cols)
    return pd.DataFrame({c: list(v) for c, v in zip(cols, columns, strict=True)})


def forget(conn: Connection, frame: pd.DataFrame) -> None:
    """Delete these candidates' rows (``frame`` has the KEY columns).

    Set-based: a night's candidates (up to millions) go to a staging table in one bulk load and
    one DELETE removes the matching waiting rows; nothing happens when nothing waits.
    """
    if frame.empty or conn.execute(select(deferred.c.customer_id).limit(1)).first() is None:
        return
    with bulk.staged(conn, "tend_forget_stage",
                     "customer_id TEXT, program TEXT, occurrence TEXT",
                     {k: frame[k].astype(str).to_numpy(dtype=object) for k in KEY}) as stage:
        conn.exec_driver_sql(
            f"DELETE FROM {deferred.name} WHERE EXISTS (SELECT 1 FROM {stage} s WHERE "
            f"s.customer_id = {deferred.name}.customer_id AND s.program = {deferred.name}.program"
            f" AND s.occurrence = {deferred.name}.occurrence)")


def write(conn: Connection, columns: Mapping[str, np.ndarray]) -> None:
    """Store waiting candidates, one array per column of the deferred table, in one bulk load."""
    bulk.bulk_rows(conn, deferred.name, dict(columns))
