"""Global architecture search: the space, Pareto fronts and hypervolumes against brute force,
and tiny searches whose trials are run-store steps (resumed without retraining)."""
import itertools
import json
import random
import socket
import subprocess
from pathlib import Path

import pytest
import torch
import yaml

from compresslab.cli import main
from compresslab.codesign import hypervolume, hypervolume_trace, nondominated_ranks, pareto_mask, parse_space, sample
from compresslab.codesign.pareto import dominates
from compresslab.errors import UserError
from compresslab.models import create_model
from compresslab.runs.checkpoint import load_checkpoint
from compresslab.study.search import SPACES, rungs, search

optuna = pytest.importorskip("optuna")

SPACE = {
    "family": ["mlp", "cnn"],
    "mlp": {"layers": {"min": 1, "max": 3}, "layer": {"width": [4, 8], "act": ["relu", "gelu"], "norm": ["none", "batch"]}},
    "cnn": {"blocks": {"min": 1, "max": 3},
            "block": {"channels": [2, 4], "kernel": [1, 3, 5], "act": ["relu", "silu"], "norm": ["none", "batch"],
                      "skip": [False, True], "pool": ["none", "max", "avg"]},
            "head": {"widths": [[], [8], [8, 4]]}},
}
MLP = {"family": ["mlp"], "mlp": {"layers": {"min": 1, "max": 2}, "layer": {"width": [8, 16, 32], "act": ["relu", "gelu"]}}}


def _write(tmp_path: Path, space: dict) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


# --- the space ---------------------------------------------------------------------------------


def test_defaults_are_filled_and_conditional_params_exist_only_for_existing_blocks():
    space = parse_space({"family": "cnn", "cnn": {"blocks": 2, "block": {"channels": [8]}}})
    assert space.families["cnn"]["block"] == {"channels": [8], "kernel": [3], "act": ["relu"], "norm": ["none"],
                                              "skip": [False], "pool": ["none"]}
    assert space.families["cnn"]["head"] == {"widths": [[]], "act": ["relu"]}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    full = parse_space(SPACE)
    for _ in range(25):
        trial = study.ask()
        arch = sample(full, trial)
        fam = arch["family"]
        depth, unit = ("layers", "layer") if fam == "mlp" else ("blocks", "block")
        n = trial.params[f"{fam}.{depth}"]
        assert len(arch[depth]) == n
        blocks = {int(k.split(".")[1][len(unit):]) for k in trial.params
                  if k.startswith(f"{fam}.{unit}") and k != f"{fam}.{depth}"}
        assert blocks == set(range(n))  # block i's choices exist iff block i does
        other = "cnn" if fam == "mlp" else "mlp"
        assert not any(k.startswith(other) for k in trial.params)
        for shape in ((1, 11, 11), (1, 40)):  # every sampled architecture builds and runs, 2-D and 1-D
            model = create_model("searched", num_classes=3, in_channels=1, input_shape=shape, **arch)
            assert model(torch.randn(2, *shape)).shape == (2, 3)
        study.tell(trial, 0.0)


@pytest.mark.parametrize("space, message", [
    ({"family": ["mlp"], "mlp": {"layers": 2, "layer": {"width": []}}}, "empty choice list"),
    ({"family": ["mlp"], "mlp": {"layers": 2, "layer": {"width": [8], "widht": [3]}}}, "unknown key mlp.layer.'widht'"),
    ({"family": ["mlp"], "mlp": {"layers": {"min": 3, "max": 1}, "layer": {"width": [8]}}}, "min 3 > max 1"),
    ({"family": ["cnn"], "cnn": {"blocks": 1, "block": {"channels": [8], "kernel": [2]}}}, "odd positive"),
    ({"family": ["rnn"]}, "unknown family"),
    ({"family": ["cnn"], "mlp": {"layers": 1, "layer": {"width": [8]}}}, "no 'cnn:' section"),
    ({"family": ["mlp"], "mlp": {"layers": 1, "layer": {"act": ["relu"]}}}, "width is required"),
])
def test_bad_spaces_are_one_line_errors(space, message):
    with pytest.raises(UserError, match=message):
        parse_space(space)


def test_the_shipped_bragg_space_parses():
    parse_space(yaml.safe_load((SPACES / "codesign-bragg-space.yaml").read_text()))


# --- Pareto and hypervolume --------------------------------------------------------------------


def _table(rng, n, d):
    return [tuple(rng.choice([0, 1, 2, 3, 4, 5]) + rng.random() * (rng.random() < 0.5) for _ in range(d))
            for _ in range(n)]


def test_pareto_mask_and_ranks_match_brute_force():
    rng = random.Random(0)
    for _ in range(200):
        d = rng.choice([2, 3])
        pts = _table(rng, rng.randint(1, 12), d)
        # brute force: on the front iff no point is <= everywhere and < somewhere
        front = [not any(all(q[k] <= p[k] for k in range(d)) and q != p for q in pts) for p in pts]
        assert pareto_mask(pts) == front
        ranks = nondominated_ranks(pts)
        assert [r == 0 for r in ranks] == front
        for i, r in enumerate(ranks):  # rank r: dominated by someone of rank r-1, by no one of rank >= r
            assert r == 0 or any(ranks[j] == r - 1 and dominates(pts[j], pts[i]) for j in range(len(pts)))
            assert not any(ranks[j] >= r and dominates(pts[j], pts[i]) for j in range(len(pts)))


def _brute_hv(pts, ref):
    """Exact: split space at every coordinate and add the cells some point dominates."""
    axes = [sorted({p[k] for p in pts if all(x < r for x, r in zip(p, ref))} | {ref[k]}) for k in range(len(ref))]
    total = 0.0
    for cell in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = [axes[k][i] for k, i in enumerate(cell)]
        if any(all(p[k] <= lo[k] for k in range(len(ref))) for p in pts):
            vol = 1.0
            for k, i in enumerate(cell):
                vol *= axes[k][i + 1] - axes[k][i]
            total += vol
    return total


def test_hypervolume_by_hand_and_against_brute_force():
    # three staircase points under (4, 4): strips of width 1 and heights 1, 2, 3
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (4, 4)) == pytest.approx(6.0)
    assert hypervolume([(1, 3), (2, 2), (3, 1), (3, 3), (5, 0)], (4, 4)) == pytest.approx(6.0)  # dominated, outside
    assert hypervolume([(1, 1, 1)], (2, 3, 4)) == pytest.approx(1 * 2 * 3)
    rng = random.Random(1)
    for _ in range(100):
        d = rng.choice([2, 3, 4])
        pts = _table(rng, rng.randint(1, 7), d)
        ref = [6.0] * d
        assert hypervolume(pts, ref) == pytest.approx(_brute_hv(pts, ref))


def test_hypervolume_trace_never_falls():
    pts = _table(random.Random(2), 15, 2)
    trace = hypervolume_trace(pts, [False, True])
    assert all(b >= a - 1e-12 for a, b in zip(trace, trace[1:]))


def test_rungs():
    assert rungs(8, 2) == [2, 4, 8]
    assert rungs(5, 1) == [2, 5]
    assert rungs(1, 1) == [1]  # nothing to save: no halving
    assert rungs(6, 0) == [6]


# --- searches ----------------------------------------------------------------------------------


def _train_dirs(runs: Path) -> set[str]:
    return {p.name for p in runs.glob("train-*")}


def test_nsga2_search_on_digits_is_run_store_steps_and_resumes_without_training(tmp_path):
    space, runs = _write(tmp_path, MLP), tmp_path / "runs"
    kw = dict(trials=6, objectives="accuracy,bops", epochs=1, batch=3, halving=0, runs=runs)
    seen = []
    results, folder = search(space, "digits", on_trial=seen.append, **kw)
    assert results["complete"] == 6 and [t["trial"] for t in seen] == list(range(6))
    dirs = _train_dirs(runs)
    assert results["steps_ran"] == len(dirs) >= 1
    for member in json.loads((folder / "front.json").read_text()):
        spec = json.loads((runs / member["step"] / "spec.json").read_text())
        assert spec["kind"] == "train" and spec["spec"]["model"] == member["model"]
        model, cfg = load_checkpoint(runs / member["step"])  # the spec rebuilds the network
        assert cfg["model"]["name"] == "searched"
        assert isinstance(member["bops"], float)
    front = results["front"]
    on = pareto_mask([(-f["accuracy"], f["bops"]) for f in front])
    assert all(on)
    lines = (folder / "front.csv").read_text().splitlines()
    assert lines[0].startswith("trial,state,epochs,accuracy,bops") and len(lines) == len(front) + 1
    assert (folder / "pareto.svg").read_text().startswith("<svg") and (folder / "hypervolume.svg").is_file()

    (folder / "study.db").unlink()  # a lost study: the re-seeded sampler asks the same trials
    again, _ = search(space, "digits", **kw)
    assert again["steps_ran"] == 0 and _train_dirs(runs) == dirs
    assert again["front"] == results["front"]
    more, _ = search(space, "digits", **{**kw, "trials": 7})  # extending the study adds one trial
    assert more["trials"] == 7 and more["steps_ran"] <= 1


def test_a_trial_left_running_by_a_dead_process_is_adopted_without_training(tmp_path):
    space, runs = _write(tmp_path, MLP), tmp_path / "runs"
    kw = dict(objectives="accuracy,bops", epochs=1, batch=3, halving=0, runs=runs)
    _, folder = search(space, "digits", trials=3, **kw)
    study = optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.db'}")
    dead = subprocess.Popen(["true"])
    dead.wait()
    killed = study.ask()  # asked by a process that was killed before it told the result
    killed.set_user_attr("arch", study.trials[0].user_attrs["arch"])
    killed.set_user_attr("owner", f"{socket.gethostname()}:{dead.pid}")
    results, _ = search(space, "digits", trials=4, **kw)
    assert results["complete"] == 4 and results["steps_ran"] == 0  # its step had finished: reused


def test_successive_halving_stops_the_worse_half(tmp_path):
    space, runs = _write(tmp_path, MLP), tmp_path / "runs"
    seen = []
    results, _ = search(space, "digits", trials=4, epochs=2, batch=4, halving=1, runs=runs, on_trial=seen.append)
    assert results["complete"] == 2 and results["stopped"] == 2
    assert sorted(t["epochs"] for t in seen) == [1, 1, 2, 2]
    assert {t["state"] for t in seen if t["epochs"] == 1} == {"stopped"}


def test_search_on_bragg_regression_with_error_and_bops(tmp_path, capsys):
    space = _write(tmp_path, {"family": "cnn", "cnn": {"blocks": {"min": 1, "max": 2},
                                                      "block": {"channels": [2, 4], "pool": ["none", "max"]}}})
    rc = main(["search", str(space), "--data", "bragg:synthetic@600", "--trials", "2", "--epochs", "1",
               "--objectives", "error,bops", "--runs", str(tmp_path / "runs"), "--json", "-q"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["objectives"] == ["error", "bops"] and out["complete"] == 2
    assert all(f["error"] > 0 and f["model"]["options"]["family"] == "cnn" for f in out["front"])


@pytest.mark.parametrize("space, args, message", [
    ({"family": ["mlp"], "mlp": {"layers": 1, "layer": {"width": []}}}, [], "empty choice list"),
    ({"family": ["mlp"], "mlp": {"layers": 1, "layer": {"width": [8]}, "depth": 2}}, [], "unknown key"),
    ({"family": ["mlp"], "mlp": {"layers": {"min": 2, "max": 1}, "layer": {"width": [8]}}}, [], "min 2 > max 1"),
    (MLP, ["--trials", "0"], "--trials 0"),
    (MLP, ["--objectives", "error,bops"], "error is not measurable on classification"),
    (MLP, ["--objectives", "accuracy,joules"], "unknown 'joules'"),
    (MLP, ["--sampler", "cmaes"], "--sampler"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, capsys, space, args, message):
    runs = tmp_path / "runs"
    rc = main(["search", str(_write(tmp_path, space)), "--data", "digits", "--runs", str(runs), *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not runs.exists()


def test_accuracy_is_not_measurable_on_regression(tmp_path, capsys):
    rc = main(["search", str(_write(tmp_path, MLP)), "--data", "bragg:synthetic@600", "--objectives", "accuracy,bops",
               "--runs", str(tmp_path / "runs")])
    assert rc == 2 and "accuracy is not measurable on regression" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
