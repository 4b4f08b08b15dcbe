"""Playwright driving Debian's chromium (headless): log in, rank by keyboard and drag, score, submit, see the
progress move, export as the admin; a screenshot of the labelling page goes to tests/artifacts/."""

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


def test_label_an_item_in_a_real_browser(tmp_path, candidates, live_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    engine = db.open_db(url)
    load_candidates(engine, candidates)
    admin_token, token = db.ensure_admin(engine), db.add_labeler(engine, "carol")
    base = live_server(url, candidates).start()
    dialogs: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1000, "height": 900})
        page.set_default_timeout(10_000)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        page.goto(f"{base}/label")  # not signed in: sent to the login form
        page.fill("#token", token)
        page.click("#login")
        page.wait_for_url(f"{base}/label")
        assert page.inner_text("#mine") == "0"
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
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "labeling_page.png"), full_page=True)
        page.click("#submit")
        page.wait_for_url(f"{base}/label")
        assert page.inner_text("#mine") == "1" and page.inner_text("#left") == "2"
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
        label = s.scalar(select(db.Label))
    assert json.loads(label.ranking_json) == expected and json.loads(label.likert_json) == [6, 3, 1]
    assert json.loads(label.flags_json)[shown[2]] == ["harmful"]
    prefs = [json.loads(x) for x in lines]
    assert len(prefs) == 3 and all(p["label"]["labeler"] == "carol" for p in prefs)
    assert (ARTIFACTS / "labeling_page.png").stat().st_size > 10_000
    engine.dispose()
