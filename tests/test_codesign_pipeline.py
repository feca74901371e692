"""``compresslab codesign``: baseline, global search, local search, hls4ml and the pseudo-Voigt
fit in one command, on a tiny Bragg-peak configuration."""
import importlib.util
import json
import shutil

import pytest
import yaml

from compresslab.cli import main
from compresslab.codesign_pipeline import PRESET_DIR, load_spec, presets, verdict
from compresslab.errors import UserError

HLS = importlib.util.find_spec("hls4ml") is not None and shutil.which("g++") is not None


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("codesign")
    spec = yaml.safe_load(open(PRESET_DIR / "codesign-bragg.yaml"))
    spec.update(name="tiny", data="bragg:synthetic@600")
    spec["baseline"]["epochs"] = 1
    spec["search"].update(trials=3, epochs=1, batch=3)
    spec["local"].update(top_k=1, bits=[8], prune_rounds=1, qat_epochs=1)
    spec["hls4ml"] = {"parity_samples": 50} if HLS else None
    spec["pseudo_voigt"] = {"patches": 20}
    path = d / "tiny.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, d / "runs"


def test_the_pipeline_runs_end_to_end_and_reuses_every_model(tiny, capsys):
    path, runs = tiny
    code, out, err = run(capsys, "codesign", path, "--runs", runs, "--quiet", "--json")
    assert code == 0, err
    r = json.loads(out)
    rows, b, w = r["local"]["rows"], r["baseline"], r["winner"]
    assert b["checkpoint"].split("/")[-1].startswith("train-") and r["search"]["complete"] >= 1
    # the winner: the cheapest model at least as good as the baseline, else the best of the final front
    good = [x for x in rows if x["metric"] <= b["metric"]]
    if good:
        assert r["matched"] and w["bops"] == min(x["bops"] for x in good)
    else:
        assert not r["matched"] and w["metric"] == min(rows[i]["metric"] for i in r["local"]["front2"])
    assert r["bops_reduction"] == pytest.approx(b["bops"] / w["bops"])
    pv = r["pseudo_voigt"]
    assert pv["n"] == 20 and pv["speedup"] == pytest.approx(pv["seconds_per_patch"] / r["winner_seconds_per_example"])
    assert r["verdict"] == verdict(r) and len(r["verdict"]) == 2 + HLS
    if HLS:
        p = r["hls4ml"]["parity"]
        assert r["hls4ml"]["examples"] == 50 and p["centre_distance_px"] < 0.05
    out_dir = runs / "codesign" / next(p.name for p in (runs / "codesign").iterdir())
    page = (out_dir / "report.html").read_text()
    assert "<svg" in page and "Verdict" in page and w["name"] in page
    # a rerun trains nothing: the search and every local-search child come from the store
    code, out, err = run(capsys, "codesign", path, "--runs", runs, "--quiet", "--json")
    again = json.loads(out)
    assert code == 0 and again["search"]["steps_ran"] == 0
    assert all(x.get("reused", True) for x in again["local"]["rows"]) and again["winner"]["checkpoint"] == w["checkpoint"]


def test_overrides_and_presets():
    s = load_spec(preset="codesign-bragg", **{"search.trials": 4, "search.epochs": 2, "data": "bragg:synthetic@900"})
    assert (s.search.trials, s.search.epochs, s.data) == (4, 2, "bragg:synthetic@900")
    assert s.baseline.model == "braggnn" and s.hls4ml.precision == "ap_fixed<16,6>"
    assert "codesign-bragg" in presets()


@pytest.mark.parametrize("edit, message", [
    ({"search": {"trials": 0}}, "search.trials"),
    ({"colour": "red"}, "colour"),
    ({"hls4ml": {"precision": "fixed16"}}, "fixed16"),
    ({"data": "digits", "pseudo_voigt": {"patches": 5}}, "bragg:synthetic only"),
    ({"data": "no-such-data"}, "no-such-data"),
])
def test_bad_specs_are_one_line_errors_and_write_nothing(tmp_path, capsys, edit, message):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({"name": "bad", **edit}))
    code, _, err = run(capsys, "codesign", spec, "--runs", tmp_path / "runs")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs" / "codesign").exists()


def test_spec_or_preset_not_both():
    with pytest.raises(UserError, match="not both"):
        load_spec("x.yaml", "codesign-bragg")
    with pytest.raises(UserError, match="unknown codesign preset"):
        load_spec(preset="nope")
