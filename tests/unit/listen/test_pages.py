"""The customer's pages over HTTP, against a real ``tend serve`` on both store backends."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from _support import (
    interruptible_store,
    make_program,
    make_registry,
    night_decisions,
    plan_test_night,
    running_service,
    sent_survey,
    shop_settings,
)
from sqlalchemy import delete, func, select

from tend.listen import pages
from tend.listen.app import SECURITY_HEADERS
from tend.messages.compliance import ComplianceLinks
from tend.messages.contexts import SURVEY_PURPOSE
from tend.messages.tokens import make_message_token, make_token
from tend.store import complaints, suppressions
from tend.store import preferences as chosen
from tend.store.db import connect
from tend.store.tables import complaints as complaints_table
from tend.store.tables import (
    preferences,
    survey_answers,
)
from tend.store.tables import suppressions as suppressions_table

SECRET = "test-secret"
MONDAY = dt.date(2026, 11, 16)
ONE_CLICK = {"List-Unsubscribe": "One-Click"}

pytestmark = pytest.mark.demo_shop(customers=250, seed=21, as_of=MONDAY)


def token(customer_id: str, purpose: str = "unsubscribe") -> str:
    return make_token(SECRET, customer_id, purpose)


def active_reasons(store_url: str, customer_id: str) -> set[str]:
    with connect(store_url).connect() as conn:
        held = suppressions.active(conn)
    return set(held.loc[held["customer_id"] == customer_id, "reason"])


def form_token(page: str) -> str:
    found = re.search(r'name="form" value="([^"]+)"', page)
    assert found, "the page has no form token"
    return found.group(1)


def table_counts(store_url: str) -> dict[str, int]:
    with connect(store_url).connect() as conn:
        return {t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (suppressions_table, preferences, survey_answers, complaints_table)}


# -- unsubscribe ------------------------------------------------------------------------------


def test_one_click_post_unsubscribes_at_once_without_cookie_or_redirect(
        store_url: str, tmp_path: Path) -> None:
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        r = c.post(f"/unsubscribe/{token('cus_1')}", data=ONE_CLICK)
        assert r.status_code == 200
        assert "set-cookie" not in r.headers and "location" not in r.headers
        assert "You are unsubscribed" in r.text
        assert active_reasons(store_url, "cus_1") == {"unsubscribed"}
        # a second click (or SendGrid retrying) changes nothing
        assert c.post(f"/unsubscribe/{token('cus_1')}", data=ONE_CLICK).status_code == 200
        # mail providers may post multipart/form-data (RFC 8058 section 3.1)
        posted = c.post(f"/unsubscribe/{token('cus_2')}",
                        files={"List-Unsubscribe": (None, "One-Click")})
        assert posted.status_code == 200
        # a urlencoded post is read as UTF-8 whatever charset it declares: never refused for it
        latin = c.post(f"/unsubscribe/{token('cus_3')}", content=b"List-Unsubscribe=One-Click",
                       headers={"Content-Type": "application/x-www-form-urlencoded; "
                                                "charset=ISO-8859-1"})
        assert latin.status_code == 200
        # a multipart post may name any charset but the escape codecs, however it spells it
        labels = ("iso-8859-1", "UTF_8", "latin_1", "windows-1251", "x-no-such-charset")
        for n, label in enumerate(labels):
            body, headers = multipart({"List-Unsubscribe": b"One-Click"}, label)
            assert c.post(f"/unsubscribe/{token(f'cus_l{n}')}", content=body,
                          headers=headers).status_code == 200, label
    assert table_counts(store_url)["suppressions"] == 3 + len(labels)
    assert active_reasons(store_url, "cus_2") == {"unsubscribed"}


def test_a_get_shows_the_page_and_changes_nothing(store_url: str, tmp_path: Path) -> None:
    with running_service(store_url, tmp_path, settings=shop_settings()) as svc, \
            httpx.Client(base_url=svc.url) as c:
        page = c.get(f"/unsubscribe/{token('cus_1')}")
        head = c.head(f"/unsubscribe/{token('cus_1')}")
        fr = c.get(f"/unsubscribe/{token('cus_1')}", headers={"Accept-Language": "fr-CA,fr"})
    assert page.status_code == 200 and head.status_code == 200
    assert "Unsubscribe from Maison Verte" in page.text
    # the button posts the RFC 8058 body to the same link
    assert 'method="post"' in page.text
    assert 'name="List-Unsubscribe" value="One-Click"' in page.text
    assert "Ne plus recevoir les courriels de Maison Verte" in fr.text
    assert 'lang="fr"' in fr.text
    assert table_counts(store_url)["suppressions"] == 0


def test_the_emails_links_carry_their_language_and_the_pages_prefer_it(
        store_url: str, tmp_path: Path) -> None:
    """A French customer whose phone is set to English: the links of a French email (the
    List-Unsubscribe header's URL, the same in the footer) bring French pages, and the pages'
    own links and forms stay in French."""
    english_phone = {"Accept-Language": "en-US,en;q=0.9"}
    with running_service(store_url, tmp_path) as svc, \
            httpx.Client(base_url=svc.url, headers=english_phone) as c:
        links = ComplianceLinks(svc.url, SECRET.encode())
        unsubscribe, prefs_url, headers = links.for_customer("cus_1", "marketing", "fr")
        assert unsubscribe is not None and prefs_url is not None
        assert headers["List-Unsubscribe"] == f"<{unsubscribe}>"
        assert unsubscribe.endswith("?lang=fr") and prefs_url.endswith("?lang=fr")

        page = c.get(unsubscribe)
        assert page.status_code == 200 and 'lang="fr"' in page.text
        assert "Ne plus recevoir les courriels de" in page.text
        # the button posts to the page's own link, language kept
        assert re.search(r'method="post" action="\.\./unsubscribe/[\w.-]+\?lang=fr"', page.text)
        # RFC 8058: the mailbox provider posts to the header's URL, query and all
        done = c.post(headers["List-Unsubscribe"][1:-1], data=ONE_CLICK)
        assert done.status_code == 200 and 'lang="fr"' in done.text
        assert active_reasons(store_url, "cus_1") == {"unsubscribed"}
        change = re.search(r'action="\.\./(unsubscribe/[\w.-]+/change\?lang=fr)"', done.text)
        assert change, "the undo form lost the language"
        undo = c.post(f"/{change.group(1)}", data={"form": form_token(done.text),
                                                   "choice": "undo"})
        assert undo.status_code == 200 and 'lang="fr"' in undo.text
        assert active_reasons(store_url, "cus_1") == set()

        preferences_page = c.get(prefs_url)
        assert 'lang="fr"' in preferences_page.text
        assert re.search(r'<form method="post" action="\.\./preferences/[\w.-]+\?lang=fr"',
                         preferences_page.text)
        # a language the pages do not speak is passed over, like an unknown browser language
        assert 'lang="en"' in c.get(f"/unsubscribe/{token('cus_2')}?lang=de").text
        assert 'lang="fr"' in c.get(f"/unsubscribe/{token('cus_2')}?lang=fr-CA").text
        # the customer's own choice still comes first
        with connect(store_url).begin() as conn:
            chosen.save(conn, "cus_3", chosen.Preferences(locale="en"),
                        now=dt.datetime.now(dt.UTC))
        assert 'lang="en"' in c.get(f"/unsubscribe/{token('cus_3')}?lang=fr").text


def test_undo_and_fewer_emails_instead(store_url: str, tmp_path: Path) -> None:
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        done = c.post(f"/unsubscribe/{token('cus_1')}", data=ONE_CLICK)
        assert 'value="undo"' in done.text and 'value="fewer"' in done.text
        undo = c.post(f"/unsubscribe/{token('cus_1')}/change",
                      data={"form": form_token(done.text), "choice": "undo"})
        assert undo.status_code == 200 and "subscribed again" in undo.text
        assert active_reasons(store_url, "cus_1") == set()

        again = c.post(f"/unsubscribe/{token('cus_1')}", data=ONE_CLICK)
        assert active_reasons(store_url, "cus_1") == {"unsubscribed"}
        fewer = c.post(f"/unsubscribe/{token('cus_1')}/change",
                       data={"form": form_token(again.text), "choice": "fewer"})
        assert fewer.status_code == 200 and "fewer emails" in fewer.text
    assert active_reasons(store_url, "cus_1") == set()
    with connect(store_url).connect() as conn:
        assert chosen.load(conn, "cus_1").fewer_emails is True


#: Tokens that must not work: garbage, truncated, tampered, wrong purpose, not ours.
BAD_TOKENS = [
    "forged",
    "Y3VzXzE",                                      # no MAC
    make_token(SECRET, "cus_1")[:-3],               # truncated MAC
    make_token(SECRET, "cus_2").split(".")[0] + "." + make_token(SECRET, "cus_1").split(".")[1],
    make_token(SECRET, "cus_1", SURVEY_PURPOSE),    # wrong purpose
    make_token("another-secret", "cus_1"),          # not ours
]


def test_bad_tokens_get_a_plain_404_that_reveals_nothing(store_url: str,
                                                         tmp_path: Path) -> None:
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        for bad in BAD_TOKENS:
            answers = [c.get(f"/unsubscribe/{bad}"),
                       c.post(f"/unsubscribe/{bad}", data=ONE_CLICK),
                       c.post(f"/unsubscribe/{bad}/change", data={"choice": "undo"}),
                       c.get(f"/preferences/{bad}"),
                       c.get(f"/survey/{bad}?rating=1")]
            for r in answers:
                assert (r.status_code, r.text) == (404, "Not found\n"), bad
        # the same answer as a path that does not exist; each page takes only its own tokens
        for r in (c.get("/nothing/at/all"),
                  c.get(f"/preferences/{token('cus_1')}"),
                  c.post(f"/unsubscribe/{token('cus_1', 'preferences')}", data=ONE_CLICK),
                  c.get(f"/survey/{token('cus_1')}?rating=1")):
            assert (r.status_code, r.text) == (404, "Not found\n")
    assert set(table_counts(store_url).values()) == {0}


def test_a_one_click_post_today_suppresses_tonights_marketing(
        shop_url: str, store_url: str, tmp_path: Path) -> None:
    reg = make_registry(make_program("winback", cooldown_days=0), caps=[])
    plan_test_night(shop_url, store_url, MONDAY, reg, secret=SECRET)
    monday = night_decisions(store_url, MONDAY)
    claimed = monday.loc[monday["fate"] == "claimed", "customer_id"].tolist()
    unsubscribed, only_looked = claimed[0], claimed[1]
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        assert c.post(f"/unsubscribe/{token(unsubscribed)}", data=ONE_CLICK).status_code == 200
        assert c.get(f"/unsubscribe/{token(only_looked)}").status_code == 200
    tuesday = MONDAY + dt.timedelta(days=1)
    plan_test_night(shop_url, store_url, tuesday, reg, secret=SECRET)
    fates = night_decisions(store_url, tuesday).set_index("customer_id")["fate"]
    assert fates[unsubscribed] == "suppressed:unsubscribed"
    assert fates[only_looked] != "suppressed:unsubscribed"


# -- preferences ------------------------------------------------------------------------------


def test_preferences_are_saved_from_the_page(store_url: str, tmp_path: Path) -> None:
    url = f"/preferences/{token('cus_1', 'preferences')}"
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        page = c.get(url)
        assert page.status_code == 200 and "Your email preferences" in page.text
        saved = c.post(url, data={"form": form_token(page.text), "pause": "3", "fewer": "on",
                                  "no_offers": "on", "lang": "fr"})
        # the page now speaks the language the customer chose
        assert saved.status_code == 200 and "C'est noté" in saved.text
        with connect(store_url).connect() as conn:
            prefs = chosen.load(conn, "cus_1")
        today = dt.datetime.now(dt.UTC).date()
        assert prefs.fewer_emails and prefs.offers_opt_out and prefs.locale == "fr"
        assert prefs.paused_until is not None
        assert 89 <= (prefs.paused_until - today).days <= 92
        assert "Garder ma pause" in saved.text
        kept = c.post(url, data={"form": form_token(saved.text), "pause": "keep", "lang": ""})
        assert kept.status_code == 200
    with connect(store_url).connect() as conn:
        after = chosen.load(conn, "cus_1")
    assert after.paused_until == prefs.paused_until
    assert not after.fewer_emails and not after.offers_opt_out and after.locale is None


def test_forms_refuse_cross_site_posts(store_url: str, tmp_path: Path) -> None:
    url = f"/preferences/{token('cus_1', 'preferences')}"
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        good = form_token(c.get(url).text)
        other = form_token(c.get(f"/preferences/{token('cus_2', 'preferences')}").text)
        fields = {"pause": "1", "lang": ""}
        refused = [
            c.post(url, data=fields),                                   # no form token
            c.post(url, data={**fields, "form": "x" + good}),           # forged
            c.post(url, data={**fields, "form": other}),                # another customer's
            c.post(url, data={**fields, "form": good},
                   headers={"Origin": "https://evil.example"}),
            c.post(url, data={**fields, "form": good},
                   headers={"Referer": "https://evil.example/page"}),
            c.post(f"/unsubscribe/{token('cus_1')}/change",              # another form's
                   data={"form": good, "choice": "undo"}),
        ]
        assert [r.status_code for r in refused] == [403] * 6
        assert table_counts(store_url)["preferences"] == 0
        # our own pages post with Origin: null (Referrer-Policy: no-referrer)
        ok = c.post(url, data={**fields, "form": good}, headers={"Origin": "null"})
        assert ok.status_code == 200
        same = c.post(url, data={**fields, "form": good}, headers={"Origin": svc.url})
        assert same.status_code == 200


def test_an_expired_form_token_is_refused(store_url: str, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from tend.listen import pages

    url = f"/preferences/{token('cus_1', 'preferences')}"
    monkeypatch.setattr(pages, "FORM_SECONDS", -1)
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        stale = form_token(c.get(url).text)
        r = c.post(url, data={"form": stale, "pause": "1", "lang": ""})
    assert r.status_code == 403
    assert table_counts(store_url)["preferences"] == 0


# -- survey -----------------------------------------------------------------------------------


def survey_url(customer_id: str, message_id: str) -> str:
    return f"/survey/{make_message_token(SECRET, customer_id, message_id, SURVEY_PURPOSE)}"


def test_a_rating_is_one_answer_per_message_and_a_later_click_changes_it(
        store_url: str, tmp_path: Path) -> None:
    mid = "0123456789abcdef0123456789abcdef"
    sent_survey(store_url, "cus_1", mid)
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        assert c.head(survey_url("cus_1", mid) + "?rating=1").status_code == 200
        assert table_counts(store_url)["survey_answers"] == 0  # a link checker's HEAD
        first = c.get(survey_url("cus_1", mid) + "?rating=4")
        assert first.status_code == 200 and "Thank you" in first.text
        c.get(survey_url("cus_1", mid) + "?rating=5")
        thanks = c.post(survey_url("cus_1", mid),
                        data={"form": form_token(first.text), "rating": "5",
                              "comment": "Lovely skillet"})
        assert thanks.status_code == 200 and "We received your comment" in thanks.text
    with connect(store_url).connect() as conn:
        rows = conn.execute(select(survey_answers)).mappings().all()
        assert complaints.open_ones(conn) == []
    assert len(rows) == 1
    assert (rows[0]["rating"], rows[0]["comment"], rows[0]["program"], rows[0]["sku"]) == (
        5, "Lovely skillet", "survey", "SKL-26")


def test_a_low_rating_opens_a_complaint_that_pauses_marketing(store_url: str,
                                                               tmp_path: Path) -> None:
    mid = "0123456789abcdef0123456789abcdef"
    sent_survey(store_url, "cus_1", mid)
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        low = c.get(survey_url("cus_1", mid) + "?rating=2", headers={"Accept-Language": "fr"})
        assert "Nous sommes désolés" in low.text
        c.post(survey_url("cus_1", mid), data={"form": form_token(low.text), "rating": "2",
                                               "comment": "Arrived broken"})
    assert active_reasons(store_url, "cus_1") == {"complaint"}
    with connect(store_url).connect() as conn:
        (opened,) = complaints.open_ones(conn)
    assert (opened["rating"], opened["comment"], opened["source"]) == (2, "Arrived broken",
                                                                       "survey")


def test_a_good_rating_after_a_low_one_withdraws_a_complaint_not_yet_heard(
        store_url: str, tmp_path: Path) -> None:
    mid = "0123456789abcdef0123456789abcdef"
    sent_survey(store_url, "cus_1", mid)
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        for n in (1, 2, 3, 4, 5):
            assert c.get(survey_url("cus_1", mid) + f"?rating={n}").status_code == 200
    assert active_reasons(store_url, "cus_1") == set()


def answer_at(store_url: str, at: dt.datetime, rating: int, comment: str | None = None,
              message_id: str = "0123456789abcdef0123456789abcdef") -> None:
    """Apply a survey answer of cus_1 as ``tend serve`` does, at a chosen time."""
    with connect(store_url).begin() as conn:
        pages.HANDLERS["survey_answer"](conn, {"customer_id": "cus_1", "message_id": message_id,
                                               "rating": rating, "comment": comment}, at)


def test_a_scanners_sweep_of_the_rating_links_in_any_order_opens_no_complaint(
        store_url: str) -> None:
    """Mail scanners fetch all five rating links in any order: every order of the five,
    a second apart, leaves the last rating and no complaint."""
    mid = "0123456789abcdef0123456789abcdef"
    sent_survey(store_url, "cus_1", mid)
    start = dt.datetime(2026, 11, 17, 8, tzinfo=dt.UTC)
    engine = connect(store_url)
    for order in itertools.permutations((1, 2, 3, 4, 5)):
        with engine.begin() as conn:
            conn.execute(delete(survey_answers))
            conn.execute(delete(complaints_table))
        for i, rating in enumerate(order):
            answer_at(store_url, start + dt.timedelta(seconds=i), rating)
        with engine.connect() as conn:
            assert complaints.open_ones(conn) == [], order
            assert conn.execute(select(survey_answers.c.rating)).scalar_one() == order[-1]


def test_rating_links_fetched_in_parallel_open_no_complaint(store_url: str,
                                                            tmp_path: Path) -> None:
    """The five links of a message fetched at the same moment over HTTP: the answers race in
    the store, and each is decided after the one before it."""
    mids = [f"{n:032x}" for n in range(1, 7)]
    for n, mid in enumerate(mids):
        sent_survey(store_url, "cus_1", mid, as_of=MONDAY + dt.timedelta(days=n))
    orders = [(5, 4, 3, 2, 1), (3, 5, 1, 4, 2), (1, 2, 3, 4, 5), (2, 1, 5, 3, 4),
              (4, 1, 2, 5, 3), (1, 5, 2, 4, 3)]
    with running_service(store_url, tmp_path) as svc:
        def fetch(url: str, ready: threading.Barrier) -> int:
            with httpx.Client(base_url=svc.url, timeout=30) as c:
                ready.wait()
                return c.get(url).status_code

        with ThreadPoolExecutor(max_workers=5) as pool:
            for mid, order in zip(mids, orders, strict=True):
                ready = threading.Barrier(5)
                codes = list(pool.map(
                    lambda n, m=mid, b=ready: fetch(survey_url("cus_1", m) + f"?rating={n}", b),
                    order))
                assert codes == [200] * 5
    assert active_reasons(store_url, "cus_1") == set()
    with connect(store_url).connect() as conn:
        assert complaints.open_ones(conn) == []
    assert table_counts(store_url)["survey_answers"] == len(mids)


def test_outside_a_sweep_a_low_rating_still_opens_a_complaint(store_url: str) -> None:
    """What a sweep does not cover counts as usual: a low rating clicked more than the sweep's
    interval after the previous answer, and a low rating sent with a comment."""
    mid = "0123456789abcdef0123456789abcdef"
    sent_survey(store_url, "cus_1", mid)
    t0 = dt.datetime(2026, 11, 17, 8, tzinfo=dt.UTC)
    engine = connect(store_url)

    def open_ratings() -> list[tuple[int | None, str | None]]:
        with engine.connect() as conn:
            return [(c["rating"], c["comment"]) for c in complaints.open_ones(conn)]

    for n, at in enumerate((t0, t0 + dt.timedelta(seconds=1))):  # a sweep: ends on 5
        answer_at(store_url, at, (1, 5)[n])
    assert open_ratings() == []
    later = t0 + dt.timedelta(seconds=1) + pages.SWEEP + dt.timedelta(seconds=1)
    answer_at(store_url, later, 2)  # the customer, after reading the email
    assert open_ratings() == [(2, None)]
    # the same rating again soon after (a reload) keeps it; a good one soon after is a sweep
    answer_at(store_url, later + dt.timedelta(seconds=5), 2)
    assert open_ratings() == [(2, None)]

    with engine.begin() as conn:
        conn.execute(delete(survey_answers))
        conn.execute(delete(complaints_table))
    answer_at(store_url, t0, 4)
    answer_at(store_url, t0 + dt.timedelta(seconds=20), 2, comment="Arrived broken")
    assert open_ratings() == [(2, "Arrived broken")]
    # a commented complaint is the customer's: a later sweep-like click does not close it
    answer_at(store_url, t0 + dt.timedelta(seconds=30), 5)
    assert open_ratings() == [(2, "Arrived broken")]


def test_a_sweep_leaves_a_complaint_staff_were_told_of(store_url: str) -> None:
    mid = "0123456789abcdef0123456789abcdef"
    sent_survey(store_url, "cus_1", mid)
    t0 = dt.datetime(2026, 11, 17, 8, tzinfo=dt.UTC)
    answer_at(store_url, t0, 1)
    with connect(store_url).begin() as conn:
        (opened,) = complaints.open_ones(conn)
        complaints.mark_notified(conn, [opened["id"]], now=t0)
    answer_at(store_url, t0 + dt.timedelta(seconds=3), 5)
    with connect(store_url).connect() as conn:
        assert [c["id"] for c in complaints.open_ones(conn)] == [opened["id"]]


def test_the_survey_page_speaks_the_links_language(store_url: str, tmp_path: Path) -> None:
    mid = "0123456789abcdef0123456789abcdef"
    sent_survey(store_url, "cus_1", mid)
    with running_service(store_url, tmp_path) as svc, \
            httpx.Client(base_url=svc.url, headers={"Accept-Language": "en"}) as c:
        page = c.get(survey_url("cus_1", mid) + "?lang=fr&rating=4")
        assert page.status_code == 200 and 'lang="fr"' in page.text
        action = re.search(r'<form method="post" action="([\w.-]+\?lang=fr)"', page.text)
        assert action, "the comment form lost the language"
        thanks = c.post(f"/survey/{action.group(1)}",
                        data={"form": form_token(page.text), "rating": "4",
                              "comment": "Très bien"})
        assert thanks.status_code == 200 and 'lang="fr"' in thanks.text


def test_a_survey_link_for_a_message_never_sent_writes_nothing(store_url: str,
                                                                tmp_path: Path) -> None:
    sent_survey(store_url, "cus_1", "0123456789abcdef0123456789abcdef")
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        unknown = c.get(survey_url("cus_1", "f" * 32) + "?rating=1")
        someone_else = c.get(survey_url("cus_2", "0123456789abcdef0123456789abcdef")
                             + "?rating=1")
    assert unknown.status_code == 200 and someone_else.status_code == 200
    assert set(table_counts(store_url).values()) == {0}


# -- every page -------------------------------------------------------------------------------


def test_every_page_sends_the_security_headers(store_url: str, tmp_path: Path) -> None:
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        answers = [c.get(f"/unsubscribe/{token('cus_1')}"),
                   c.get(f"/preferences/{token('cus_1', 'preferences')}"),
                   c.get("/pages.css"), c.get("/unsubscribe/forged"), c.get("/healthz")]
    for r in answers:
        for name, value in SECURITY_HEADERS:
            assert r.headers[name.decode()] == value.decode()
    assert "script-src" not in answers[0].headers["content-security-policy"]
    page = answers[0].text
    assert "<script" not in page and "http" not in re.sub(r'href="\.\./[^"]*"', "", page)
    assert answers[2].headers["content-type"].startswith("text/css")
    assert "#2f6f4f" in answers[2].text  # the emails' palette


# -- bad input: a clear 4xx, no traceback, nothing written -----------------------------------

UNSUB = f"/unsubscribe/{make_token(SECRET, 'cus_1')}"
PREFS = f"/preferences/{make_token(SECRET, 'cus_1', 'preferences')}"
SURVEY = "/survey/" + make_message_token(SECRET, "cus_1", "0123456789abcdef0123456789abcdef",
                                         SURVEY_PURPOSE)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def multipart(fields: dict[str, bytes], charset: str | None = None) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body as a client writes it, declaring ``charset`` if given."""
    body = b"".join(b"--zz\r\nContent-Disposition: form-data; name=\"" + k.encode()
                    + b"\"\r\n\r\n" + v + b"\r\n" for k, v in fields.items()) + b"--zz--\r\n"
    declared = f"; charset={charset}" if charset else ""
    return body, {"Content-Type": f"multipart/form-data{declared}; boundary=zz"}


#: Starlette decodes a multipart form with the charset the client declares: this one turns
#: the text "\ud800" into a lone surrogate, which no store can keep.
ESCAPED = multipart({"List-Unsubscribe": b"One-Click", "x": b"\\ud800"}, "unicode_escape")


#: (method, path, body, headers, expected status)
BAD_REQUESTS: list[tuple[str, str, bytes, dict[str, str], int]] = [
    ("PUT", UNSUB, b"List-Unsubscribe=One-Click", FORM, 405),
    ("DELETE", PREFS, b"", {}, 405),
    ("GET", UNSUB + "/change", b"", {}, 405),
    ("PATCH", SURVEY + "?rating=1", b"", {}, 405),
    ("POST", UNSUB, b"List-Unsubscribe=" + b"x" * 9000, FORM, 413),
    ("POST", UNSUB, b"x" * (3 * 1024 * 1024), FORM, 413),
    ("POST", UNSUB, b"List-Unsubscribe=One-Click", {"Content-Type": "application/json"}, 415),
    ("POST", UNSUB, b"List-Unsubscribe=One-Click", {}, 415),
    ("POST", UNSUB, b"", FORM, 400),                                   # no one-click field
    ("POST", UNSUB, b"List-Unsubscribe=Yes", FORM, 400),
    ("POST", UNSUB, b"List-Unsubscribe=One-Click&List-Unsubscribe=One-Click", FORM, 400),
    ("POST", UNSUB, b"List-Unsubscribe=One-Click&&&=", FORM, 400),     # malformed
    ("POST", UNSUB, b"List-Unsubscribe=One-Click&junk", FORM, 400),
    ("POST", UNSUB, b"List-Unsubscribe=One-Click&x=\xff\xfe", FORM, 400),  # not UTF-8
    ("POST", UNSUB, b"List-Unsubscribe=One-Click&x=%ff%fe", FORM, 400),    # encoded, not UTF-8
    ("POST", UNSUB, "&".join(f"f{i}=1" for i in range(40)).encode(), FORM, 400),
    ("POST", UNSUB, b"List-Unsubscribe=One-Click&x%00=1", FORM, 400),  # NUL in a name
    ("POST", UNSUB, *ESCAPED, 400),                                    # a lone surrogate
    ("POST", UNSUB, *multipart({"List-Unsubscribe": b"One-Click"}, "UTF7"), 400),
    ("POST", UNSUB, b"--x\r\nContent-Disposition: form-data; name=\"List-Unsub",
     {"Content-Type": "multipart/form-data; boundary=x"}, 400),          # truncated multipart
    ("POST", UNSUB + "?" + "a" * 5000, b"List-Unsubscribe=One-Click", FORM, 400),
    ("GET", UNSUB + "?" + "lang=fr&" * 500, b"", {}, 400),
    ("GET", SURVEY + "?rating=" + "9" * 400, b"", {}, 400),
    ("GET", SURVEY, b"", {}, 400),                                     # no rating
    ("GET", SURVEY + "?rating=0", b"", {}, 400),
    ("GET", SURVEY + "?rating=6", b"", {}, 400),
    ("GET", SURVEY + "?rating=%C2%B2", b"", {}, 400),                  # a superscript two
    ("GET", SURVEY + "?rating=%ff", b"", {}, 400),
    ("GET", SURVEY + "?rating=5&rating=1", b"", {}, 400),              # which one?
    ("GET", UNSUB + "?lang=fr&lang=en", b"", {}, 400),
    ("POST", PREFS, b"pause=1&lang=", FORM, 403),                      # no form token
    ("GET", "/unsubscribe/" + "A" * 5000 + ".x", b"", {}, 404),
    ("GET", "/unsubscribe/%ff%fe.%00", b"", {}, 404),
    ("GET", "/survey/..%2F..%2Fetc%2Fpasswd?rating=1", b"", {}, 404),
]


def test_bad_input_gets_a_clear_4xx_and_writes_nothing(store_url: str,
                                                       tmp_path: Path) -> None:
    """Table-driven over one server (each case names itself when it fails)."""
    sent_survey(store_url, "cus_1", "0123456789abcdef0123456789abcdef")
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        for method, path, body, headers, status in BAD_REQUESTS:
            case = f"{method} {path[:60]} {body[:40]!r}"
            r = c.request(method, path, content=body, headers=headers)
            assert r.status_code == status, case
            assert r.headers["content-type"].startswith("text/plain"), case
            assert "Traceback" not in r.text and len(r.text) < 80, case
    assert set(table_counts(store_url).values()) == {0}


def test_bad_choices_in_a_genuine_form_are_refused(store_url: str, tmp_path: Path) -> None:
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        good = form_token(c.get(PREFS).text)
        answers = [c.post(PREFS, data={"form": good, "pause": "12", "lang": ""}),
                   c.post(PREFS, data={"form": good, "pause": "1", "lang": "de"}),
                   c.post(PREFS, data={"form": good, "pause": "1", "lang": "",
                                       "fewer": "yes"}),
                   c.post(PREFS, data={"form": good, "pause": "1\x00", "lang": ""})]
    assert [r.status_code for r in answers] == [400] * 4
    assert set(table_counts(store_url).values()) == {0}


def test_a_comment_is_kept_without_hidden_characters_and_unstorable_text_is_refused(
        store_url: str, tmp_path: Path) -> None:
    """Staff read comments in a terminal (``tend complaints``) and in the digest: control
    characters (ESC sequences) and bidi overrides are removed when the comment is taken."""
    mid = "0123456789abcdef0123456789abcdef"
    sent_survey(store_url, "cus_1", mid)
    with running_service(store_url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        form = form_token(c.get(survey_url("cus_1", mid) + "?rating=3").text)
        fields = {"form": form.encode(), "rating": b"3"}
        body, headers = multipart({**fields, "comment": b"bad \\ud800 here"}, "unicode_escape")
        escaped = c.post(survey_url("cus_1", mid), content=body, headers=headers)
        assert escaped.status_code == 400 and escaped.text == "Bad request\n"
        body, headers = multipart({**fields, "comment": "Très bien".encode()}, "UTF-8")
        assert c.post(survey_url("cus_1", mid), content=body, headers=headers).status_code == 200
        assert table_counts(store_url)["complaints"] == 1
        with connect(store_url).connect() as conn:
            assert conn.execute(select(survey_answers.c.comment)).scalar_one() == "Très bien"
        hidden = c.post(survey_url("cus_1", mid), data={
            "form": form, "rating": "3",
            "comment": "Line one\r\n\x1b[2J\x1b]0;pwned\x07 \u202eevil\u2066 ok\tdone\x85"})
        assert hidden.status_code == 200
    clean = "Line one\n[2J]0;pwned evil ok\tdone"
    with connect(store_url).connect() as conn:
        assert conn.execute(select(survey_answers.c.comment)).scalar_one() == clean
        assert [c["comment"] for c in complaints.open_ones(conn)] == [clean]


def test_emails_are_masked_in_the_service_logs(store_url: str, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    import logging

    with running_service(store_url, tmp_path):
        logging.getLogger("tend.listen").warning("could not apply %s for %s", "unsubscribe",
                                                 "marie.tremblay@example.com")
    assert "marie.tremblay@example.com" not in caplog.text
    assert "m***y@example.com" in caplog.text


def test_while_the_store_is_down_pages_show_and_clicks_are_kept(store_url: str,
                                                                 tmp_path: Path) -> None:
    import time

    mid = "0123456789abcdef0123456789abcdef"
    sent_survey(store_url, "cus_1", mid)
    with interruptible_store(store_url) as store, \
            running_service(store.url, tmp_path) as svc, httpx.Client(base_url=svc.url) as c:
        store.down()  # every connection attempt fails, as in an outage
        try:
            page = c.get(f"/preferences/{token('cus_1', 'preferences')}")
            assert page.status_code == 200 and "Your email preferences" in page.text
            assert c.post(f"/unsubscribe/{token('cus_1')}", data=ONE_CLICK).status_code == 200
            assert c.get(survey_url("cus_1", mid) + "?rating=1").status_code == 200
            assert svc.service.spool.pending() == 2  # both kept, neither applied yet
        finally:
            store.up()
        deadline = time.monotonic() + 20
        while svc.service.spool.pending() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert active_reasons(store_url, "cus_1") == {"unsubscribed", "complaint"}
    assert table_counts(store_url)["survey_answers"] == 1
