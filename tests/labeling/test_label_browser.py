"""Playwright driving Debian's chromium (headless) through a whole labelling session as a person does it: log in,
rank by keyboard and by drag, score, flag, submit, skip an item, label the last one, see the progress move and
the done page, log out; then export as the admin. Every form post carries the browser's own Origin header, so
this also checks the app's same-origin rule against a real browser. Screenshots of the login page and the
labelling page go to tests/artifacts/ (CI keeps that folder)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from rlhfkit.labeling.web import load_candidates
from rlhfkit.labeling.webapp import db

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                       reason=f"{CHROMIUM} not found: apt-get install -y --no-install-recommends chromium"),
]


def card_order(page) -> list[int]:
    return [int(x) for x in page.locator("#ranking .card").evaluate_all("cs => cs.map(c => c.dataset.index)")]


def progress(page) -> tuple[int, int, int]:
    """(labelled, skipped, left) as the page shows them."""
    return tuple(int(page.inner_text(f"#{key}")) for key in ("mine", "skipped", "left"))


def test_a_whole_labelling_session_in_a_real_browser(tmp_path, candidates, live_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    engine = db.open_db(url)
    load_candidates(engine, candidates)  # K = 3 (hostile text), 2, 4
    admin_token, token = db.ensure_admin(engine), db.add_labeler(engine, "carol")
    base = live_server(url, candidates).start()
    dialogs: list[str] = []
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.set_default_timeout(10_000)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{base}/label")  # not signed in: sent to the login form
        page.wait_for_url(f"{base}/login")
        page.screenshot(path=str(ARTIFACTS / "login_page.png"))
        page.fill("#token", token)
        page.click("#login")
        page.wait_for_url(f"{base}/label")
        assert progress(page) == (0, 0, 3)

        # Item 1 (K = 3): rank by keys and by drag, score, flag, submit.
        shown = card_order(page)
        cards = page.locator("#ranking .card")
        cards.nth(2).focus()
        page.keyboard.press("1")  # the third card shown becomes the best
        assert card_order(page) == [shown[2], shown[0], shown[1]]
        page.keyboard.press("ArrowDown")  # ... then one place lower
        assert card_order(page) == [shown[0], shown[2], shown[1]]
        cards.nth(2).drag_to(cards.nth(0), target_position={"x": 20, "y": 5})  # drag the last card to the top
        expected = card_order(page)
        assert expected == [shown[1], shown[0], shown[2]]
        ranks = page.locator("input.rank").evaluate_all("xs => xs.map(x => [x.name, x.value])")
        assert sorted(ranks) == sorted([f"rank_{i}", str(expected.index(i) + 1)] for i in range(3))
        for i, score in zip(range(3), (6, 3, 1)):
            page.select_option(f"select[name=likert_{i}]", str(score))
        page.check(f"input[name=flag_{shown[2]}][value=harmful]")
        page.screenshot(path=str(ARTIFACTS / "labeling_page.png"), full_page=True)
        page.click("#submit")
        page.wait_for_url(f"{base}/label")
        assert progress(page) == (1, 0, 2)

        # Item 2 (K = 2): skip it, unscored (the skip button needs no valid form).
        assert page.inner_text("#prompt") == "Second prompt"
        page.click("#skip")
        page.wait_for_url(f"{base}/label")
        assert progress(page) == (1, 1, 1)

        # Item 3 (K = 4): the keyboard alone; the last card shown is moved to the top with ArrowUp.
        assert page.inner_text("#prompt") == "Third prompt"
        last = card_order(page)
        page.locator("#ranking .card").nth(3).focus()
        for _ in range(3):
            page.keyboard.press("ArrowUp")
        assert card_order(page) == [last[3], *last[:3]]
        for i in range(4):
            page.select_option(f"select[name=likert_{i}]", str(i + 2))
        page.click("#submit")
        page.wait_for_url(f"{base}/label")
        assert progress(page) == (2, 1, 0) and "nothing left for you to label" in page.inner_text("#done")

        page.click("header button[type=submit]")  # log out
        page.wait_for_url(f"{base}/login")
        page.goto(f"{base}/label")
        page.wait_for_url(f"{base}/login")  # the session is over
        assert page.locator("#token").is_visible()
        assert dialogs == []  # the <script> / onerror responses never ran

        admin = browser.new_page()
        admin.goto(f"{base}/login")
        admin.fill("#token", admin_token)
        admin.click("#login")
        admin.wait_for_url(f"{base}/admin")
        with admin.expect_download() as info:
            admin.click("#export-preferences")
        lines = Path(info.value.path()).read_text(encoding="utf-8").splitlines()
        browser.close()
    with Session(engine) as s:
        labels = {lab.item_id: lab for lab in s.scalars(select(db.Label))}
        prompts = dict(s.execute(select(db.Item.prompt_text, db.Item.id)).all())
    first, skipped, third = (labels[prompts[p]] for p in ("Describe <b>this</b> film", "Second prompt",
                                                          "Third prompt"))
    assert json.loads(first.ranking_json) == expected and json.loads(first.likert_json) == [6, 3, 1]
    assert json.loads(first.flags_json)[shown[2]] == ["harmful"]
    assert skipped.skipped and json.loads(third.ranking_json) == [last[3], *last[:3]]
    assert json.loads(third.likert_json) == [2, 3, 4, 5]
    prefs = [json.loads(x) for x in lines]
    assert len(prefs) == 3 + 6 and all(p["label"]["labeler"] == "carol" for p in prefs)
    assert (ARTIFACTS / "labeling_page.png").stat().st_size > 10_000
    assert (ARTIFACTS / "login_page.png").stat().st_size > 2_000
    engine.dispose()
