"""Open the HTML reports in headless Chromium (Debian's chromium + chromium-driver, installed by the
Makefile): every page loads, every image renders, the console has no errors."""

import shutil
from pathlib import Path

import pytest

from flatminima.report import render_all
from flatminima.store import Store

TESTS = Path(__file__).resolve().parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian chromium / chromium-driver not installed")


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path_factory.mktemp('chrome')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def page_problems(driver, path: Path) -> list[str]:
    driver.get(path.as_uri())
    problems = []
    if driver.execute_script("return document.readyState") != "complete":
        problems.append("page did not finish loading")
    broken = driver.execute_script(
        "return Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt)")
    problems += [f"image {alt!r} did not render" for alt in broken]
    problems += [f"console: {e['message']}" for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
    return problems


def test_study_reports_render_without_errors(browser, tmp_path, monkeypatch):
    monkeypatch.setenv("FLATMINIMA_STUDY_MODULES", "toy_study")
    monkeypatch.syspath_prepend(str(TESTS))
    from flatminima.studies import run_study

    st = Store(tmp_path)
    run_study("toy", store=st, progress=False)
    index = render_all(st)
    pages = [index, *sorted(index.parent.glob("*--*.html"))]
    assert len(pages) >= 2
    for page in pages:
        assert page_problems(browser, page) == [], page
    browser.get((index.parent / "toy--default.html").as_uri())
    assert browser.execute_script("return document.images.length") == 1
    # the summary's Markdown table is an HTML table with one row per point (4 x values, 2 seeds)
    assert browser.execute_script(
        "const h = Array.from(document.querySelectorAll('h2')).find(e => e.textContent === 'points');"
        "return h.nextElementSibling.querySelectorAll('tbody tr').length") == 8
    # self-contained: nothing is loaded from elsewhere
    assert browser.execute_script("return document.querySelectorAll('link, script[src], img:not([src^=\"data:\"])')"
                                  ".length") == 0


def test_the_check_detects_a_broken_page(browser, tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body><img alt='missing' src='data:image/png;base64,AAAA'>"
                   "<script>console.error('boom')</script></body></html>")
    problems = page_problems(browser, bad)
    assert any("missing" in p for p in problems) and any("boom" in p for p in problems)
