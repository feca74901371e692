"""Every study kind's report, opened in a real browser (headless Chromium) at 1280 px.

The reports are rebuilt with ``compresslab report`` from the ``results.json`` fixtures in
``tests/fixtures/reports/`` (tiny versions of every preset family; regenerate them with
``python tests/fixtures/reports/make_fixtures.py``). For each page a small script, added
to a copy of the page, records after ``load``:

* JavaScript errors (``window.onerror`` and unhandled rejections, installed first);
* horizontal overflow of the page (``scrollWidth`` against the 1280 px viewport), and
  content cut off inside a box with ``overflow: hidden``;
* images that did not load, and how many inline SVG plots there are;

and writes them as JSON into the DOM, which ``chromium --dump-dom`` prints. Screenshots go
to ``$COMPRESSLAB_ARTIFACTS/browser`` (default ``artifacts/browser``; CI keeps them).

Marked ``browser``: skipped where no Chromium is installed, except under CI (``CI`` set),
where a missing browser fails the test, because ``.ci/run`` installs it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from compresslab.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "reports"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))
WIDTH = 1280
ARTIFACTS = Path(os.environ.get("COMPRESSLAB_ARTIFACTS", Path(__file__).parents[1] / "artifacts")) / "browser"

pytestmark = pytest.mark.browser

FIRST = """<script>
window.__errors = [];
window.addEventListener('error',
  e => window.__errors.push(String(e.message || e.type) + ' @ ' + (e.filename || '') + ':' + (e.lineno || '')));
window.addEventListener('unhandledrejection', e => window.__errors.push('unhandled rejection: ' + String(e.reason)));
</script>"""

LAST = """<script>
window.addEventListener('load', () => {
  const root = document.documentElement;
  const imgs = Array.from(document.images);
  const wide = Array.from(document.body.querySelectorAll('*'))
    .filter(el => el.getBoundingClientRect().right > root.clientWidth + 1 && !el.closest('.scroll, [data-scroll]'))
    .slice(0, 5).map(el => el.tagName.toLowerCase() + (el.className ? '.' + el.className : ''));
  const clipped = Array.from(document.body.querySelectorAll('*'))
    .filter(el => ['hidden', 'clip'].includes(getComputedStyle(el).overflowX) && el.scrollWidth > el.clientWidth + 1)
    .slice(0, 5).map(el => el.tagName.toLowerCase() + (el.className ? '.' + el.className : ''));
  const out = {
    errors: window.__errors,
    viewport: root.clientWidth,
    scroll_width: root.scrollWidth,
    widest: wide,
    clipped: clipped,
    images: imgs.length,
    broken_images: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => (i.alt || i.src).slice(0, 80)),
    svgs: document.querySelectorAll('svg').length,
    tables: document.querySelectorAll('table').length,
    title: document.title,
  };
  const pre = document.createElement('pre');
  pre.id = 'browser-checks';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    return None


@pytest.fixture(scope="module")
def browser():
    path = chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("no Chromium under CI: .ci/run should have installed Debian's chromium package")
        pytest.skip("no Chromium installed (apt-get install chromium)")
    return path


def run_browser(exe: str, url: str, *args: str) -> str:
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}",
               f"--window-size={WIDTH},1600", "--virtual-time-budget=5000", *args, url]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


def instrument(page: str) -> str:
    """The page with the error hook first in <head> and the check script last in <body>."""
    page, n = re.subn(r"<head([^>]*)>", lambda m: m.group(0) + FIRST, page, count=1)
    assert n == 1, "report has no <head>"
    assert "</body>" in page, "report has no </body>"
    i = page.rindex("</body>")
    return page[:i] + LAST + page[i:]


@pytest.mark.parametrize("name", NAMES)
def test_report_renders_in_chromium(name, browser, tmp_path, capsys):
    study = tmp_path / "studies" / name
    study.mkdir(parents=True)
    shutil.copy(FIXTURES / f"{name}.json", study / "results.json")
    assert main(["report", str(study)]) == 0, capsys.readouterr().err
    report = study / "report.html"
    checked = study / "checked.html"  # beside the report, so relative image paths still resolve
    checked.write_text(instrument(report.read_text()))

    dom = run_browser(browser, checked.as_uri(), "--dump-dom")
    m = re.search(r'<pre id="browser-checks">(.*?)</pre>', dom, re.S)
    assert m, "the check script did not run (no load event?)"
    checks = json.loads(m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{name}.png"
    run_browser(browser, report.as_uri(), f"--screenshot={shot}")
    assert shot.stat().st_size > 0

    assert checks["errors"] == [], f"JavaScript errors: {checks['errors']}"
    assert checks["viewport"] == WIDTH
    assert checks["scroll_width"] <= WIDTH, f"page overflows {WIDTH} px ({checks['scroll_width']} px): {checks['widest']}"
    assert checks["clipped"] == [], f"content cut off by overflow hidden: {checks['clipped']}"
    assert checks["broken_images"] == [], f"images that did not load: {checks['broken_images']}"
    assert checks["tables"] > 0 and checks["images"] + checks["svgs"] > 0, checks


def test_fixtures_cover_every_study_kind():
    from compresslab.study.kinds import list_study_kinds

    kinds = {json.loads((FIXTURES / f"{n}.json").read_text())["kind"] for n in NAMES}
    assert kinds == set(list_study_kinds())


def test_instrument_places_both_scripts():
    page = instrument("<html><head><title>t</title></head><body><p>x</p></body></html>")
    assert page.index("__errors = []") < page.index("<title>") < page.index("<p>x</p>") < page.index("browser-checks")
