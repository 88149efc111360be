"""``report.html`` in a real headless browser (Debian's chromium through chromedriver and selenium).

What a person opening the page sees: the stage counts equal the manifest's, thumbnails have loaded,
and choosing a reason in the filter leaves only rows of that reason on screen. The run has kept
rows, two rejection reasons (near duplicates, over budget) and quarantined rows. Skipped, saying
why, only where chromium cannot be had (``.ci/run`` installs it as root with apt-get).
"""

from __future__ import annotations

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from kdata.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--window-size=1280,900")

VISIBLE_TILES = """return Array.from(document.querySelectorAll('#grid .tile'))
    .filter(e => e.getClientRects().length > 0)
    .map(e => ({group: e.dataset.group, decision: e.dataset.decision, cls: e.dataset.cls,
                caption: e.querySelector('figcaption b').innerText}));"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("chromium and chromedriver are not installed (as root: apt-get install -y chromium "
                    "chromium-driver; .ci/run does this)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, builtin_models):
    """kd3 with near-duplicate removal on part of the built-in pool, two payloads made unreadable."""
    from kdata.pools.spec import open_pool

    tmp = tmp_path_factory.mktemp("report-e2e")
    t = open_pool("builtin:digits-web").units[0].read().slice(0, 500)
    images = t.column("image").to_pylist()
    images[3], images[7] = b"not an image", b"\x89PNG broken"
    t = t.set_column(t.schema.get_field_index("image"), "image", pa.array(images, pa.binary()))
    pq.write_table(t, tmp / "pool.parquet")
    out = tmp / "run"
    assert main(["select", "--pool", str(tmp / "pool.parquet"), "--method", "kd3", "--budget", "100", "--dedup",
                 "near", "--out", str(out), "--device", "cpu", "--quiet"]) == 0
    return out


def _visible(driver) -> list[dict]:
    return driver.execute_script(VISIBLE_TILES)


def test_a_person_sees_the_counts_thumbnails_and_a_working_filter(browser, run_dir):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    manifest = json.loads((run_dir / "manifest.json").read_text())
    counts = manifest["counts"]
    reasons = {r.split(":", 1)[0] for r in counts["rejected_by_reason"]}
    assert {"duplicate_of", "kd3_over_budget"} <= reasons and counts["quarantined"] == 2
    browser.get((run_dir / "report.html").as_uri())

    # the stage table, read off the screen
    shown = {tr.get_attribute("data-key"): tr.find_elements(By.TAG_NAME, "td")[-1].text
             for tr in browser.find_elements(By.CSS_SELECTOR, "#counts tbody tr")}
    for key in ("n_in", "kept", "rejected", "quarantined"):
        assert int(shown[key]) == counts[key], key
    for reason in reasons:
        assert int(shown[f"reason-{reason}"]) == sum(n for r, n in counts["rejected_by_reason"].items()
                                                     if r.split(":", 1)[0] == reason)

    # thumbnails have loaded: at least one visible image with pixels
    loaded = browser.execute_script(
        "return Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0"
        " && i.getClientRects().length > 0).length")
    assert loaded > 0
    first = browser.find_element(By.CSS_SELECTOR, "#grid .tile img")
    assert first.is_displayed() and first.size["width"] > 0

    everything = _visible(browser)
    assert {t["decision"] for t in everything} == {"kept", "rejected", "quarantined"}
    assert {t["group"] for t in everything} >= reasons | {"kept", "quarantined"}

    # filter by reason: only that reason stays on screen, and the count line says so
    Select(browser.find_element(By.ID, "f-reason")).select_by_value("duplicate_of")
    dup = _visible(browser)
    assert dup and len(dup) < len(everything)
    assert all(t["group"] == "duplicate_of" and t["caption"].startswith("duplicate_of:") for t in dup)
    assert browser.find_element(By.ID, "shown-count").text.startswith(f"{len(dup)} of ")

    # add a class filter: both apply; back to "all": every row again
    cls = dup[0]["cls"]
    Select(browser.find_element(By.ID, "f-class")).select_by_value(cls)
    both = _visible(browser)
    assert both and all(t["group"] == "duplicate_of" and t["cls"] == cls for t in both)
    Select(browser.find_element(By.ID, "f-class")).select_by_value("")
    Select(browser.find_element(By.ID, "f-reason")).select_by_value("")
    Select(browser.find_element(By.ID, "f-decision")).select_by_value("kept")
    kept = _visible(browser)
    assert kept and all(t["decision"] == "kept" and t["caption"].startswith("kept #") for t in kept)
    Select(browser.find_element(By.ID, "f-decision")).select_by_value("")
    assert len(_visible(browser)) == len(everything)

    # nothing was fetched and nothing failed: no resource loads, no console errors (a CSP violation is one)
    assert browser.execute_script("return performance.getEntriesByType('resource').length") == 0
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == []


def test_a_quarantined_tile_shows_its_error_on_screen(browser, run_dir):
    """The quarantined tiles show each row's error from decisions.parquet (they showed only "unreadable")."""
    import pyarrow.compute as pc
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    dec = pq.read_table(run_dir / "decisions.parquet")
    errors = {r["sample_id"]: r["error"] for r in dec.filter(pc.equal(dec.column("decision"), "quarantined")).to_pylist()}
    assert len(errors) == 2 and all(errors.values())
    browser.get((run_dir / "report.html").as_uri())
    Select(browser.find_element(By.ID, "f-decision")).select_by_value("quarantined")
    shown = {t.find_element(By.TAG_NAME, "code").text: t.find_element(By.CSS_SELECTOR, "figcaption .error").text
             for t in browser.find_elements(By.CSS_SELECTOR, "#grid .tile") if t.is_displayed()}
    assert shown == {i: f"error: {e}" for i, e in errors.items()}
    assert not browser.find_elements(By.CSS_SELECTOR, "#grid .tile.kept .error")  # only quarantined rows have one


def test_a_text_runs_tiles_show_the_texts(browser, tmp_path):
    """A causal-LM text run's page: each tile shows its row's text (not "no image"), on screen."""
    pytest.importorskip("transformers")
    from tests.helpers.text_models import text_assets

    d = text_assets()
    out = tmp_path / "text-run"
    assert main(["select", "--pool", str(d / "pool.jsonl"), "--teacher", f"hf:{d / 't'}", "--student",
                 f"hf:{d / 's'}", "--method", "teacher_confidence", "--budget", "0.3", "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    browser.get((out / "report.html").as_uri())
    tiles = browser.execute_script(
        "return Array.from(document.querySelectorAll('#grid .tile')).filter(e => e.getClientRects().length > 0)"
        ".map(e => ({decision: e.dataset.decision, snippet: (e.querySelector('.snippet') || {}).innerText,"
        " noimg: !!e.querySelector('.noimg')}));")
    assert {t["decision"] for t in tiles} >= {"kept", "rejected"}
    assert all(t["snippet"] and not t["noimg"] for t in tiles if t["decision"] != "quarantined")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []
