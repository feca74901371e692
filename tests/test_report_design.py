"""The report design shared by every study kind, and ``compresslab report``.

Every kind's report is rebuilt from the results.json fixtures in tests/fixtures/reports
(tiny runs of every preset family); the band rule is checked on results built to fall on
either side of the independent-retrain range.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import pytest

from compresslab.cli import main
from compresslab.report.html import plot_disagreement, render
from compresslab.report.page import closeness, table
from compresslab.report.svg import COLORS

FIXTURES = Path(__file__).parent / "fixtures" / "reports"
NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def rebuild(name: str, tmp_path: Path, capsys) -> str:
    study = tmp_path / name
    study.mkdir()
    shutil.copy(FIXTURES / f"{name}.json", study / "results.json")
    assert main(["report", str(study), "--json"]) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert out == {"report": str(study / "report.html"), "kind": load(name)["kind"]}
    return (study / "report.html").read_text()


def test_fixtures_cover_every_kind():
    from compresslab.study.kinds import list_study_kinds

    assert {load(n)["kind"] for n in NAMES} == set(list_study_kinds())


@pytest.mark.parametrize("name", NAMES)
def test_every_kind_renders_one_design(name, tmp_path, capsys):
    results = load(name)
    page = rebuild(name, tmp_path, capsys)
    # one design: header with the study name and kind, the verdict before any section, run facts last
    assert f'<span class="kind">{results["kind"]}</span>' in page and results["study"] in page
    assert page.index('class="verdict"') < page.index("<h2>") < page.index('class="facts"')
    assert "Run facts" in page and "ran," in page
    # every table sits in its own scroll box, with a header row
    assert page.count("<table") == page.count('<div class="scroll"><table') > 0
    assert page.count("<thead>") == page.count("<table")
    # plots are inline SVG with hover titles; no PNG inside the page, no scripts
    assert "<svg" in page and "data:image/png" not in page and "<script" not in page
    titles = re.findall(r"<title>([^<]*)</title>", page)
    assert len(titles) > 3
    # no placeholder list items, no empty lists
    assert not re.search(r"<li>\s*none\s*</li>", page, re.I) and "<ul></ul>" not in page


def test_svg_titles_name_every_model():
    results = load("default")
    page = render(results)
    titles = " ".join(re.findall(r"<title>([^<]*)</title>", page))
    for m in results["models"]:
        assert m["name"] in titles
    # and carry the value shown (disagreement in %)
    kid = next(m for m in results["models"] if m["role"] == "child")
    assert f"{100 * kid['function']['disagreement']:.2f}%" in titles


def _bar_color(svg: str, name: str) -> str:
    m = re.search(r'<rect [^>]*fill="(#[0-9a-f]{6})"><title>' + re.escape(name) + r" ", svg)
    assert m, f"no bar for {name}"
    return m.group(1)


def test_bar_colours_follow_the_band_rule():
    """A child inside (or below) the independent-retrain range is not red; above it, it is."""
    base = load("default")
    band = base["independent_baseline"]["disagreement"]
    kid = next(i for i, m in enumerate(base["models"]) if m["role"] == "child")
    name = base["models"][kid]["name"]
    for value, want in (((band["min"] + band["max"]) / 2, "close"), (band["min"] / 2, "close"),
                        (band["max"] + 0.05, "far")):
        r = copy.deepcopy(base)
        r["models"][kid]["function"]["disagreement"] = value
        assert _bar_color(plot_disagreement(r), name) == COLORS[want]
    for m in base["models"]:  # controls are grey whatever their value, and no control is red
        if m["role"] == "control":
            assert _bar_color(plot_disagreement(base), m["name"]) == COLORS["control"]
    # no band to judge by: neither green nor red
    r = copy.deepcopy(base)
    r["independent_baseline"] = {}
    assert _bar_color(plot_disagreement(r), name) == COLORS["child"]


def test_closeness_on_both_sides():
    band = {"min": 0.08, "max": 0.09}
    assert closeness(0.038, band) == "close" and closeness(0.085, band) == "close" and closeness(0.2, band) == "far"
    # higher is closer (agreement): below the band is far
    assert closeness(0.95, band, lower_is_closer=False) == "close" and closeness(0.05, band, False) == "far"
    assert closeness(None, band) == "child" and closeness(0.1, None) == "child"


def test_notes_are_printed_only_when_there_are_some():
    r = load("default")
    r["data"]["notes"] = []
    assert "<h2>Notes</h2>" not in render(r)
    r["data"]["notes"] = ["subset: 900 of 5,058 <examples>"]
    assert "<li>subset: 900 of 5,058 &lt;examples&gt;</li>" in render(r)


def test_table_right_aligns_numeric_columns():
    html = table(["model", "acc (%)", "note"], [["a", "93.61 <small>[92.1, 94.0]</small>", "x"], ["b", "–", "y"]])
    assert html.startswith('<div class="scroll"><table>')
    heads = re.findall(r"<th((?: [^>]*)?)>", html)
    assert heads == ["", ' class="num"', ""]
    assert re.findall(r"<td((?: [^>]*)?)>", html)[:3] == ["", ' class="num"', ""]


def test_report_rebuilds_what_the_study_wrote(tiny_study, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["study", str(tiny_study), "--runs", str(runs), "--quiet"]) == 0
    capsys.readouterr()
    (study,) = (runs / "studies").iterdir()
    written = (study / "report.html").read_text()
    (study / "report.html").unlink()
    assert main(["report", str(study)]) == 0
    assert (study / "report.html").read_text() == written
    assert "report (study):" in capsys.readouterr().out
    # --out writes elsewhere and leaves the study's report alone
    other = tmp_path / "elsewhere" / "r.html"
    assert main(["report", str(study / "results.json"), "--out", str(other)]) == 0
    assert other.read_text() == written


def test_report_writes_the_pngs_beside_it(tmp_path, capsys):
    rebuild("compression-functional", tmp_path, capsys)
    assert (tmp_path / "compression-functional" / "fidelity.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("content, message", [
    (None, "no results.json"),
    ("{not json", "is not JSON"),
    ('["a list"]', "no study `kind`"),
    ('{"kind": "no-such-kind"}', "unknown study kind"),
    ('{"kind": "study", "study": "x"}', "lacks what a study report needs"),
])
def test_bad_input_is_one_line_and_exit_2(content, message, tmp_path, capsys):
    study = tmp_path / "s"
    study.mkdir()
    if content is not None:
        (study / "results.json").write_text(content)
    assert main(["report", str(study)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1 and message in err
    assert not (study / "report.html").exists() and not list(study.glob(".*.tmp"))
