"""Survey answers: one per message, and the ratings per program and per product."""

from __future__ import annotations

import datetime as dt

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
