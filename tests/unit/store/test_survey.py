"""Survey answers: one per message, and the ratings per program and per product."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest

from tend.store import connect, survey


def test_one_answer_per_message_and_ratings_per_program_and_product(store_url: str) -> None:
    now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    engine = connect(store_url)
    with engine.begin() as conn:
        for mid, cid, program, sku, rating in (("a" * 32, "C1", "survey", "SKL-26", 2),
                                               ("b" * 32, "C2", "survey", "SKL-26", 5),
                                               ("c" * 32, "C3", "survey", "OIL", 4),
                                               ("d" * 32, "C4", "checkup", None, 1)):
            survey.answer(conn, message_id=mid, customer_id=cid, program=program, sku=sku,
                          rating=rating, comment=None, now=now)
        survey.answer(conn, message_id="a" * 32, customer_id="C1", program="survey",
                      sku="SKL-26", rating=3, comment="better now", now=now)
        survey.answer(conn, message_id="a" * 32, customer_id="C1", program="survey",
                      sku="SKL-26", rating=4, comment=None, now=now)  # keeps the comment
    with engine.connect() as conn:
        answer = survey.get(conn, "a" * 32)
        by_program = survey.ratings(conn, by="program").set_index("program")
        by_sku = survey.ratings(conn, by="sku").dropna(subset=["sku"]).set_index("sku")
    assert answer is not None and (answer["rating"], answer["comment"]) == (4, "better now")
    assert by_program.loc["survey", "answers"] == 3
    assert float(by_program.loc["survey", "mean_rating"]) == (4 + 5 + 4) / 3
    assert by_program.loc["checkup", "low_ratings"] == 1
    assert by_sku.loc["SKL-26", "answers"] == 2 and by_sku.loc["SKL-26", "low_ratings"] == 0


def test_an_answer_returns_what_it_replaced(store_url: str) -> None:
    t0 = dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)
    mid = "e" * 32
    engine = connect(store_url)
    with engine.begin() as conn:
        first = survey.answer(conn, message_id=mid, customer_id="C1", program="survey",
                              sku=None, rating=2, comment=None, now=t0)
        second = survey.answer(conn, message_id=mid, customer_id="C1", program="survey",
                               sku=None, rating=5, comment=None, now=t0 + dt.timedelta(seconds=3))
    assert first is None
    assert second == survey.Previous(2, t0)
    with engine.connect() as conn:
        answer = survey.get(conn, mid)
    assert answer is not None and answer["rating"] == 5


@pytest.mark.parametrize("answered_before", [False, True])
def test_answers_that_race_are_applied_one_after_the_other(store_url: str,
                                                           answered_before: bool) -> None:
    """A second answer that arrives while the first one's transaction is still open waits for
    it, then sees its rating: whatever is decided from the previous answer holds under
    concurrent requests (the first answer of a message, or a change of it)."""
    t0 = dt.datetime(2026, 12, 1, 9, tzinfo=dt.UTC)
    mid = "f" * 32
    engine = connect(store_url)
    kw = {"message_id": mid, "customer_id": "C1", "program": "survey", "sku": None,
          "comment": None}
    if answered_before:
        with engine.begin() as conn:
            survey.answer(conn, rating=3, now=t0 - dt.timedelta(hours=1), **kw)
    first_in = threading.Event()
    seen: list[survey.Previous | None] = []

    def second() -> None:
        first_in.wait(10)
        with engine.begin() as conn:
            seen.append(survey.answer(conn, rating=4, now=t0, **kw))

    racer = threading.Thread(target=second)
    racer.start()
    with engine.begin() as conn:
        survey.answer(conn, rating=1, now=t0, **kw)
        first_in.set()
        time.sleep(0.5)  # the second answer is in flight meanwhile
        assert not seen, "the second answer did not wait for the first"
    racer.join(20)
    assert seen == [survey.Previous(1, t0)]
    with engine.connect() as conn:
        answer = survey.get(conn, mid)
    assert answer is not None and answer["rating"] == 4
