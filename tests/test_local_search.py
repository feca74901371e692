"""Local search (codesign stage 2): children as run-store steps, BOPs, fronts, baseline match,
structured rounding, and regression end to end."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from torch import nn

from compresslab.cli import main
from compresslab.compress.structured import kept_channels, structured_prune
from compresslab.measure.cost import layer_costs
from compresslab.measure.pareto import pareto_front
from compresslab.models import create_model
from compresslab.runs.checkpoint import load_checkpoint
from compresslab.study.local_search import match_baseline, run_local_search

SEARCH = dict(bits=[8, 4], prune_rounds=2, prune_amount=0.2, qat_epochs=1, finetune_epochs=1)


def _train(runs, model: str, data: str, *options: str, epochs: int = 2) -> str:
    args = ["train", "--model", model, *[x for o in options for x in ("-o", o)], "--data", data,
            "--epochs", str(epochs), "--runs", str(runs), "--quiet", "--device", "cpu"]
    assert main(args) == 0
    return str(sorted(runs.glob("train-*"), key=lambda p: p.stat().st_mtime)[-1])


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    runs = tmp_path_factory.mktemp("ls") / "runs"
    a = _train(runs, "mlp", "digits", "widths=[16]")
    b = _train(runs, "mlp", "digits", "widths=[24,12]")
    result = run_local_search([a, b], "digits", **SEARCH, baseline=b, runs=runs)
    return runs, [a, b], result


def test_children_are_store_steps_and_a_rerun_reuses_them(searched):
    runs, cands, r = searched
    kids = [row for row in r["rows"] if row["name"] != "candidate"]
    assert len(kids) == 2 * (2 + 2 + 2 * 2)  # qat x2, prune x2, prune+qat x4, per candidate
    for row in kids:
        assert (runs / row["checkpoint"].split("/")[-1] / "spec.json").is_file()
    again = run_local_search(cands, "digits", **SEARCH, baseline=cands[1], runs=runs)
    assert all(row["reused"] for row in again["rows"] if row["name"] != "candidate")
    assert [row["checkpoint"] for row in again["rows"]] == [row["checkpoint"] for row in r["rows"]]


def test_imp_rounds_prune_the_remaining_weights_and_keep_the_old_zeros(searched):
    _, _, r = searched
    rows = {row["name"]: row for row in r["rows"] if row["candidate"] == 1}
    zeros = []
    for name in ("prune-r1", "prune-r2"):
        model, _ = load_checkpoint(rows[name]["checkpoint"], apply_transforms=False)
        zeros.append({n: (m.weight == 0) for n, m in model.named_modules() if isinstance(m, nn.Linear)})
    total = sum(z.numel() for z in zeros[0].values())
    for k, z in enumerate(zeros, 1):
        assert sum(int(v.sum()) for v in z.values()) == pytest.approx((1 - 0.8 ** k) * total, abs=2)
    assert all(bool((zeros[1][n] | ~zeros[0][n]).all()) for n in zeros[0])  # round 1's zeros stay zero


def test_bops_fall_with_bits_and_match_a_hand_count(searched):
    _, _, r = searched
    for i in (0, 1):
        rows = {row["name"]: row for row in r["rows"] if row["candidate"] == i}
        assert rows["qat-b4"]["bops"] < rows["qat-b8"]["bops"] < rows["candidate"]["bops"]
        assert rows["prune-r2+qat-b4"]["bops"] < rows["prune-r1+qat-b4"]["bops"] < rows["qat-b4"]["bops"]
        # the child's recorded BOPs: every layer at 4/4 bits and its own weight sparsity
        model, _ = load_checkpoint(rows["prune-r2+qat-b4"]["checkpoint"], apply_transforms=False)
        hand = 0.0
        for m in model.modules():
            if isinstance(m, nn.Linear):
                n, s = m.in_features, float((m.weight == 0).double().mean())
                hand += m.out_features * n * ((1 - s) * 4 * 4 + 4 + 4 + math.log2(n))
        assert rows["prune-r2+qat-b4"]["bops"] == pytest.approx(hand, rel=1e-9)


def test_bops_of_one_small_layer_by_hand():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight[0, 0] = 0.0
    (row,) = layer_costs(layer, (3,), layer_bits={"": (4, 6)})
    assert row["bops"] == pytest.approx(2 * 3 * ((1 - 1 / 6) * 6 * 4 + 6 + 4 + math.log2(3)))


def test_fronts_are_the_brute_force_non_dominated_sets(searched):
    _, cands, r = searched
    pts = [(row["bops"], row["metric"]) for row in r["rows"]]

    def brute(idx):
        return sorted(i for i in idx if not any(pts[j][0] <= pts[i][0] and pts[j][1] >= pts[i][1] and pts[j] != pts[i]
                                                for j in idx) and pts[i] not in [pts[j] for j in idx if j < i])

    assert sorted(r["front2"]) == brute(range(len(pts)))
    assert sorted(r["front1"]) == brute(range(len(cands)))
    assert json.loads((Path(r["out"]) / "results.json").read_text())["front2"] == r["front2"]
    assert (Path(r["out"]) / "fronts.svg").read_text().startswith("<svg")


def test_pareto_front_random_points_against_brute_force():
    rng = random.Random(0)
    for _ in range(20):
        pts = [(rng.randint(0, 6), rng.randint(0, 6), rng.random()) for _ in range(25)]
        senses = ("min", "max", "min")
        key = [(a, -b, c) for a, b, c in pts]
        want = {i for i in range(len(pts)) if key[i] not in key[:i]
                and not any(k != key[i] and all(x <= y for x, y in zip(k, key[i])) for k in key)}
        assert set(pareto_front(pts, senses)) == want


def test_match_baseline_on_a_constructed_table():
    rows = [{"name": "a", "bops": 100.0, "metric": 0.90}, {"name": "b", "bops": 10.0, "metric": 0.80},
            {"name": "c", "bops": 30.0, "metric": 0.86}, {"name": "d", "bops": 50.0, "metric": 0.88}]
    base = {"bops": 200.0, "metric": 0.88}
    assert match_baseline(rows, base, "max")["name"] == "d"
    assert match_baseline(rows, base, "max")["reduction"] == pytest.approx(4.0)
    assert match_baseline(rows, base, "max", tolerance=0.02)["name"] == "c"
    assert match_baseline(rows, {"bops": 200.0, "metric": 0.95}, "max") is None
    errors = [{**r, "metric": 1 - r["metric"]} for r in rows]  # an error: lower is better
    assert match_baseline(errors, {"bops": 200.0, "metric": 0.12}, "min")["name"] == "d"


def test_round_to_keeps_multiples_and_never_zero():
    for current in range(1, 70):
        for kept in range(1, current + 1):
            for n in (4, 8, 16):
                k = kept_channels(current, kept, n)
                assert (k == current) if current < n else (k % n == 0 and n <= k <= current)
    for amount in (0.2, 0.5, 0.9):
        model = create_model("mlp", num_classes=10, in_channels=1, input_shape=(1, 40), widths=[40, 24, 12])
        structured_prune(model, (1, 40), amount=amount, round_to=8)
        widths = [layer[0].out_features for layer in model.hidden]
        assert all(w % 8 == 0 and w >= 8 for w in widths), widths


def test_structured_round_to_through_the_cli(searched, tmp_path):
    runs, cands, _ = searched
    out = tmp_path / "ls"
    assert main(["local-search", cands[1], "--data", "digits", "--bits", "8", "--prune-rounds", "1",
                 "--prune-amount", "0.5", "--structured", "--round-to", "8", "--qat-epochs", "1",
                 "--finetune-epochs", "1", "--runs", str(runs), "--out", str(out), "--quiet", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads((out / "results.json").read_text())["rows"]}
    model, _ = load_checkpoint(rows["prune-r1"]["checkpoint"])
    assert [layer[0].out_features for layer in model.hidden] == [16, 8]  # kept 12 -> 16 (1.5 x 8 rounds up), 6 -> 8


def test_bad_input_writes_nothing(searched, tmp_path, capsys):
    runs, cands, r = searched
    quantised = next(row["checkpoint"] for row in r["rows"] if row["name"] == "qat-b8")
    fresh = tmp_path / "runs"
    cases = [
        ([quantised, "--data", "digits"], "already quantised"),
        ([cands[0], "--data", "digits", "--bits", "8,20"], "2 to 16"),
        ([cands[0], "--data", "nosuchdata"], "nosuchdata"),
        ([cands[0], "--data", "digits", "--baseline", str(fresh.parent)], "model.json"),
        ([cands[0], "--data", "digits", "--round-to", "8"], "--structured"),
    ]
    for args, match in cases:
        assert main(["local-search", *args, "--runs", str(fresh), "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and match in err, err
        assert not fresh.exists()


def test_baseline_on_other_data_is_refused(tmp_path, capsys):
    runs = tmp_path / "runs"
    other = _train(runs, "mlp", "bragg:synthetic@200", "widths=[8]", epochs=1)
    cand = _train(runs, "mlp", "bragg:synthetic@300", "widths=[8]", epochs=1)
    before = sorted(p.name for p in runs.iterdir())
    assert main(["local-search", cand, "--data", "bragg:synthetic@300", "--baseline", other, "--runs", str(runs),
                 "--quiet"]) == 2
    assert "bragg:synthetic@200" in capsys.readouterr().err
    assert sorted(p.name for p in runs.iterdir()) == before


def test_regression_end_to_end(tmp_path):
    runs, data = tmp_path / "runs", "bragg:synthetic@300"
    cand = _train(runs, "mlp", data, "widths=[16]")
    base = _train(runs, "mlp", data, "widths=[32,16]")
    r = run_local_search([cand], data, bits=[8, 4], prune_rounds=1, qat_epochs=1, finetune_epochs=1,
                         baseline=base, tolerance=1.0, runs=runs)
    assert r["score"] == "centre_error_px" and r["sense"] == "min"
    assert all(row["metric"] > 0 for row in r["rows"])
    m = r["match"]  # a 1 px tolerance: some model matches; it is the cheapest within it
    assert m is not None and m["bops"] == min(row["bops"] for row in r["rows"]
                                              if row["metric"] <= r["baseline"]["metric"] + 1.0)
    assert m["reduction"] == pytest.approx(r["baseline"]["bops"] / m["bops"])
