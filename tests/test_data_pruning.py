"""Data-pruning scores (EL2N, GraNd, forgetting events) and subset selection."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from compresslab.compress.data_pruning import (
    ForgettingTracker,
    el2n_scores,
    grand_scores,
    keep_count,
    random_scores,
    select,
)
from compresslab.errors import UserError


def _tiny():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    x = torch.randn(11, 5)
    y = torch.randint(0, 3, (11,))
    return model, x, y


def test_el2n_matches_the_formula():
    model, x, y = _tiny()
    got = el2n_scores(model, x, y, batch_size=4)
    for i in range(len(y)):
        p = torch.softmax(model(x[i:i + 1]), 1)[0].tolist()
        want = math.sqrt(sum((p[c] - (c == int(y[i]))) ** 2 for c in range(3)))
        assert got[i] == pytest.approx(want, rel=1e-5)


def test_grand_matches_a_per_example_loop():
    model, x, y = _tiny()
    got = grand_scores(model, x, y, batch_size=4)
    for i in range(len(y)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        want = math.sqrt(sum(float(p.grad.pow(2).sum()) for p in model.parameters()))
        assert got[i] == pytest.approx(want, rel=1e-4)
    assert len(set(np.round(got, 6))) > 1  # really per example, not a batch mean


def test_forgetting_counts_a_scripted_sequence():
    t = ForgettingTracker(4)
    # presentations of examples 0..3 (correct = 1)
    seq = [[1, 0, 0, 1], [0, 1, 0, 1], [1, 0, 0, 1], [0, 0, 0, 1]]
    for row in seq:
        t.update([0, 1, 2, 3], row)
    # 0: 1→0, 1→0: 2 events; 1: learned then forgotten once; 2: never learned; 3: never forgotten
    assert t.scores().tolist() == [2.0, 1.0, math.inf, 0.0]
    # the first presentation incorrect is not an event; partial batches track per example
    t2 = ForgettingTracker(3)
    t2.update([2], [0])
    t2.update([2, 0], [1, 1])
    t2.update([0], [0])
    t2.update([2], [0])
    assert t2.scores().tolist() == [1.0, math.inf, 1.0]


def test_forgetting_term_records_through_fit():
    from compresslab.data import Dataset
    from compresslab.train import Recipe, fit

    torch.manual_seed(0)
    x, y = torch.randn(20, 1, 4), torch.randint(0, 2, (20,))
    data = Dataset("toy", x, y, x[:2], y[:2], x[:2], y[:2], num_classes=2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    t = ForgettingTracker(20)
    fit(model, data, Recipe(epochs=3, batch_size=8, lr=0.1), terms={"forgetting": t.term()},
        loss={"ce": 1.0, "forgetting": 0.0}, health=False)
    assert t.presented.tolist() == [3] * 20


def test_select_rounding_order_and_ties():
    s = np.array([0.5, 0.9, 0.1, 0.9, 0.3])
    assert keep_count(5, 0.5) == 2 and keep_count(5, 0.7) == 4 and keep_count(5, 0.01) == 1
    assert select(s, 0.4).tolist() == [1, 3]
    assert select(s, 0.4, keep="easiest").tolist() == [2, 4]
    assert select(s, 1.0).tolist() == [0, 1, 2, 3, 4]
    # ties: which of the equal scores is kept depends on the seed, and is reproducible
    flat = np.zeros(100)
    a, b = select(flat, 0.1, seed=0), select(flat, 0.1, seed=1)
    assert len(a) == 10 and a.tolist() == select(flat, 0.1, seed=0).tolist() and a.tolist() != b.tolist()
    assert a.tolist() != list(range(10))
    # infinite (never learned) scores are the hardest
    assert select([1.0, math.inf, 2.0], 0.34).tolist() == [1]


def test_select_class_balanced():
    labels = np.array([0] * 6 + [1] * 4)
    s = np.arange(10.0)  # class 1 holds every high score
    kept = select(s, 0.5, labels=labels)
    assert (labels[kept] == 0).sum() == 3 and (labels[kept] == 1).sum() == 2
    assert kept.tolist() == [3, 4, 5, 8, 9]


def test_random_scores_are_seeded():
    assert np.array_equal(random_scores(7, 3), random_scores(7, 3))
    assert not np.array_equal(random_scores(7, 3), random_scores(7, 4))


@pytest.mark.parametrize("f", [0, -0.1, 1.5, float("nan"), "x"])
def test_bad_keep_fraction(f):
    with pytest.raises(UserError, match="keep fraction"):
        select([1.0, 2.0], f)


# ---- the data-scores and subset-train step kinds, through the run store (digits, a tiny MLP)

MLP = {"name": "mlp", "options": {"widths": [16]}}


def _run(step, store):
    from compresslab.steps import check_step, run_step

    parents = {role: store.path(p) for role, p in step.parents.items()}
    check_step(step, parents)
    return run_step(step, store, parents)[0]


@pytest.mark.parametrize("method", ["random", "el2n", "grand", "forgetting"])
def test_data_scores_step(tmp_path, method):
    from compresslab.runs.store import RunStore, Step, read_json
    from compresslab.steps.common import data_of
    from compresslab.steps.specs import data_scores_spec, data_spec

    store = RunStore(tmp_path)
    data = data_spec("digits@120")
    spec = data_scores_spec(data, method, [0, 1], model=MLP, recipe={"epochs": 2, "batch_size": 32})
    out = _run(Step("data-scores", spec), store)
    scores = np.load(out / "scores.npy")
    n = len(data_of(spec).y_train)
    assert scores.shape == (n,)
    meta = read_json(out / "scores.json")
    assert meta["method"] == method and meta["n"] == n
    if method == "random":
        assert meta["seeds"] == [0] and np.array_equal(scores, random_scores(n, 0))
    elif method in ("el2n", "grand"):
        assert spec["score_epochs"] == 1 and np.isfinite(scores).all() and (scores > 0).all()
    else:
        assert ((scores >= 0) | np.isinf(scores)).all()


def test_subset_train_step_keeps_the_fraction(tmp_path):
    from compresslab.runs.store import RunStore, Step, read_json
    from compresslab.steps.specs import data_scores_spec, data_spec, subset_train_spec, train_spec

    store = RunStore(tmp_path)
    data = data_spec("digits@120")
    recipe = {"epochs": 1, "batch_size": 32}
    scores = Step("data-scores", data_scores_spec(data, "random", [0]))
    teacher = Step("train", train_spec(data, MLP, recipe, 0))
    for s in (scores, teacher):
        _run(s, store)
    n = len(np.load(store.path(scores) / "scores.npy"))
    for alpha in (0.0, 0.5):
        spec = subset_train_spec(data, MLP, recipe, 0, keep_fraction=0.3, alpha=alpha)
        assert ("temperature" in spec) == (alpha > 0)
        parents = {"scores": scores, **({"teacher": teacher} if alpha else {})}
        out = _run(Step("subset-train", spec, parents=parents), store)
        assert read_json(out / "metrics.json")["kept"] == keep_count(n, 0.3)
        assert (out / "logits_test.npy").is_file()


@pytest.mark.parametrize("kw, match", [({"keep_fraction": 0.0, "alpha": 0.5}, "keep fraction"),
                                       ({"keep_fraction": 1.2, "alpha": 0.5}, "keep fraction"),
                                       ({"keep_fraction": 0.5, "alpha": 1.5}, "alpha"),
                                       ({"keep_fraction": 0.5, "alpha": -0.1}, "alpha")])
def test_subset_train_spec_rejects(kw, match):
    from compresslab.steps.specs import data_spec, subset_train_spec

    with pytest.raises(UserError, match=match):
        subset_train_spec(data_spec("digits"), MLP, {}, 0, **kw)


def test_unknown_score_method():
    from compresslab.steps.specs import data_scores_spec, data_spec

    with pytest.raises(UserError, match="unknown score method"):
        data_scores_spec(data_spec("digits"), "margin", [0])


# ---- the data-pruning study kind through `compresslab study`

STUDY = """kind: data-pruning
name: dp-tiny
data: digits@150
seeds: [0, 1]
student: {name: mlp, options: {widths: [16]}}
teachers:
  small: {name: mlp, options: {widths: [8]}}
  large: {name: mlp, options: {widths: [32]}}
recipe: {epochs: 1, batch_size: 32}
methods: [random, el2n]
fractions: [0.3, 1.0]
alphas: [0.0, 0.9]
sweep_fractions: [0.3]
"""


def test_study_runs_through_the_cli(tmp_path):
    import json

    from compresslab.cli import main

    spec = tmp_path / "dp.yaml"
    spec.write_text(STUDY)
    assert main(["study", str(spec), "--runs", str(tmp_path / "runs")]) == 0
    (out,) = (tmp_path / "runs" / "studies").iterdir()
    results = json.loads((out / "results.json").read_text())
    cells = results["cells"]
    # 2 methods x 2 fractions x 2 alphas on the main teacher, + the other teacher at f=0.3, alpha 0.9
    assert len(cells) == 2 * 2 * 2 + 2
    assert all(c["accuracy"]["n"] == 2 for c in cells)
    assert {(b["method"], b["f"]) for b in results["best_alpha"]} == {(m, f) for m in ("random", "el2n")
                                                                      for f in (0.3, 1.0)}
    assert len(results["kd_vs_ce"]) == 4 and all("p_holm" in t for t in results["kd_vs_ce"])
    assert "Data pruning with knowledge distillation" in (out / "report.html").read_text()


@pytest.mark.parametrize("line, match", [("fractions: [0.0, 0.5]", "keep fraction"),
                                         ("fractions: [1.5]", "keep fraction"),
                                         ("alphas: [1.2]", "alpha"),
                                         ("methods: [margin]", "unknown score method")])
def test_study_bad_input_exits_2(tmp_path, capsys, line, match):
    from compresslab.cli import main

    key = line.split(":")[0]
    text = "\n".join(ln for ln in STUDY.splitlines() if not ln.startswith(key + ":")) + "\n" + line + "\n"
    spec = tmp_path / "dp.yaml"
    spec.write_text(text)
    assert main(["study", str(spec), "--runs", str(tmp_path / "runs")]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_preset_runs_in_a_tiny_configuration(tmp_path):
    import json

    from compresslab.cli import main

    runs = tmp_path / "runs"
    assert main(["study", "--preset", "data-pruning-kd", "--data", "digits", "--epochs", "1", "--subset", "120",
                 "--runs", str(runs), "--quiet"]) == 0
    (out,) = (runs / "studies").iterdir()
    results = json.loads((out / "results.json").read_text())
    assert len(results["best_alpha"]) == 4 * 6 and len(results["teacher_sweep"]) == 4 * 2 * 2 * 2  # methods x f x alpha>0 x teachers
