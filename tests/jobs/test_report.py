"""The review page a person opens after a run, in a real browser (Debian's chromium, headless, through
selenium and chromedriver): its players play each row's own window, errors and texts are there, it needs no
network and stays small."""
import html
import json
import os
import re

import pytest


@pytest.fixture(scope="module")
def page(caption_run, browser):
    path = os.path.join(caption_run["out"], "_report.html")
    browser.get(f"file://{path}")
    with open(path) as f:
        source = f.read()
    with open(os.path.join(caption_run["out"], "_summary.json")) as f:
        summary = json.load(f)
    return {"path": path, "source": source, "summary": summary, "driver": browser}


DURATIONS = """const done = arguments[arguments.length - 1];
const players = [...document.querySelectorAll('audio')];
Promise.all(players.map(a => a.readyState >= 1 ? null : new Promise(r => {
  a.addEventListener('loadedmetadata', r); a.addEventListener('error', r); a.load(); })))
  .then(() => done(players.map(a => [a.duration, parseFloat(a.dataset.window),
    a.closest('tr').querySelector('td').textContent])));"""


def test_every_player_plays_its_row_s_window(page, caption_run):
    page["driver"].set_script_timeout(60)
    players = page["driver"].execute_async_script(DURATIONS)
    windows = {r["output_id"]: r["segment_end_s"] - r["segment_start_s"] for r in caption_run["rows"]
               if r["error"] is None}
    good = [r for r in caption_run["rows"] if r["error"] is None]
    assert len(players) == len(good)  # the sample is the whole 9-row output: every good row has a player
    for duration, window, output_id in players:
        assert duration == pytest.approx(windows[output_id], abs=0.03), output_id
        assert window == pytest.approx(windows[output_id], abs=0.001)


def test_errors_texts_and_flags_are_on_the_page(page, caption_run):
    text = page["driver"].find_element("tag name", "body").text
    for kind, message in page["summary"]["first_error_by_kind"].items():
        assert kind in text and message[:60] in text
    for r in caption_run["rows"]:
        if r["error"] is None:
            assert html.escape(r["caption"]) in page["source"]
    assert "loop" in page["driver"].find_element("id", "flags").text


def test_rows_with_errors_can_be_hidden(page):
    driver = page["driver"]
    rows = driver.find_elements("css selector", "tr.row[data-error='1']")
    assert rows and all(r.is_displayed() for r in rows)
    driver.find_element("id", "show-errors").click()
    assert not any(r.is_displayed() for r in rows)
    driver.find_element("id", "show-errors").click()


def test_the_page_stands_alone_and_stays_small(page):
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", page["source"])
    assert not re.search(r"https?://", page["source"])
    assert os.path.getsize(page["path"]) <= 5_000_000
