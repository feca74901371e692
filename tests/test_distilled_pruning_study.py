"""The ``lottery`` step kind and the ``distilled-pruning`` study kind (issue 15, part 2)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from compresslab.cli import main
from compresslab.runs.store import RunStore, Step, read_json
from compresslab.steps import build, data_of, run_step
from compresslab.steps.specs import data_spec, distill_data_spec, lottery_spec, model_spec

MLP = model_spec("mlp", {"widths": [16]})
RECIPE = {"epochs": 1, "lr": 0.05, "batch_size": 64}


def test_lottery_step_real_and_distilled_via_store(tmp_path):
    torch.set_num_threads(1)
    store, data = RunStore(tmp_path / "runs"), data_spec("digits", 0.1, 0)
    dd = Step("distill-data", distill_data_spec(data, method="random", ipc=2, seed=0))
    dd_dir, _ = run_step(dd, store, {})
    small = dict(rounds=2, rate=0.5, lmc_points=3, hessian_samples=2, hessian_examples=32)
    real = Step("lottery", lottery_spec(data, MLP, RECIPE, 0, control=True, lmc_dense=True, **small))
    dist = Step("lottery", lottery_spec(data, MLP, RECIPE, 0, inner_epochs=3, landscape_points=5, **small),
                parents={"distilled": dd})
    real_dir, ran = run_step(real, store, {})
    assert ran
    dist_dir, ran = run_step(dist, store, {"distilled": dd_dir})
    assert ran
    n_train = len(data_of(real.spec).y_train)
    r, d = read_json(real_dir / "lottery.json"), read_json(dist_dir / "lottery.json")
    for out in (r, d):
        assert [round(x["sparsity"], 2) for x in out["records"]] == [0.0, 0.5, 0.75]  # 1 - (1 - rate)^r
        assert all(c["points_real"] == n_train * RECIPE["epochs"] for c in out["costs"])
        assert math.isfinite(out["hessian"]["trace"]) and out["hessian"]["examples"] == 32
        masks = load_file(str((real_dir if out is r else dist_dir) / "masks.safetensors"))
        zeros = sum(int((m == 0).sum()) for m in masks.values())
        assert zeros == out["records"][-1]["pruned"]
        assert 0 <= out["barrier"]["final"] <= 1
    assert set(r["barrier"]) == {"final", "dense"} and set(d["barrier"]) == {"final"}
    assert r["records"][0]["control_test_acc"] is None and r["records"][1]["control_test_acc"] is not None
    # the inner loop trains rounds 0..rounds-1 on the 20 synthetic images, 3 epochs each; real IMP has none
    assert [c["points_inner"] for c in d["costs"]] == [60, 60, 0] and d["inner"]["examples"] == 20
    assert all(c["points_inner"] == 0 for c in r["costs"])
    # θ_0 is the seed's initialisation, the same for both arms
    theta = load_file(str(real_dir / "theta0.safetensors"))
    init = build(MLP, data_of(real.spec), 0).state_dict()
    assert all(torch.equal(theta[k], v) for k, v in init.items())
    # the landscape's centre (a = 0) is the ticket's own train loss on the first 32 examples
    ds = data_of(dist.spec)
    ticket = build(MLP, ds, 0)
    ticket.load_state_dict(load_file(str(dist_dir / "ticket.safetensors")))
    scan = d["landscape"]
    assert scan["coords"] == pytest.approx([-1, -0.5, 0, 0.5, 1]) and r["landscape"] is None
    with torch.no_grad():
        ce = torch.nn.functional.cross_entropy(ticket(ds.x_train[:32]), ds.y_train[:32]).item()
    assert scan["loss"][2] == pytest.approx(ce, rel=1e-4)
    assert scan["summary"]["centre_loss"] == pytest.approx(ce, rel=1e-4)
    masks = load_file(str(dist_dir / "masks.safetensors"))
    assert all(torch.all(ticket.state_dict()[k][m == 0] == 0) for k, m in masks.items())  # pruned stay 0
    assert str(store.root) not in (dist_dir / "spec.json").read_text()  # the parent is a role, not a path
    assert run_step(dist, store, {"distilled": dd_dir}) == (dist_dir, False)  # resume reuses it


def tiny_preset(tmp_path: Path, **changes) -> Path:
    """The shipped preset, shrunk to digits, a 16-wide MLP and a random inner set."""
    from compresslab.study.spec import load_spec

    raw = load_spec(None, preset="distilled-pruning").model_dump(mode="json", exclude={"device", "deterministic"})
    assert raw["kind"] == "distilled-pruning" and raw["distill"]["method"] == "dm" and raw["rounds"] == 3
    raw.update(data="digits", model=MLP, recipe={**raw["recipe"], "epochs": 1, "batch_size": 64},
               distill={"method": "random", "ipc": 2}, rounds=2, inner_epochs=3, seeds=[0, 1], lmc_points=3,
               hessian_samples=2, hessian_examples=32, landscape_points=5)
    raw.update(changes)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_study_kind_through_cli(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["study", str(tiny_preset(tmp_path)), "--runs", str(runs), "-q"]) == 0
    assert "Distilled-IMP masks reach higher sparsities" in capsys.readouterr().out
    (out,) = (runs / "studies").iterdir()
    res = json.loads((out / "results.json").read_text())
    assert {"rows", "barrier", "hessian", "max_sparsity", "tests", "verdicts", "seeds"} <= set(res)
    assert len(res["rows"]) == 3 and res["rows"][0]["control"] is None and res["rows"][2]["control"]["n"] == 2
    n_train = res["data"]["sizes"]["train"]
    for r in res["rows"]:
        assert r["search_points_distilled"] == r["round"] * 20 * 3
        assert r["search_points_real"] == r["round"] * n_train  # 1 real epoch per search round
        for arm in ("real", "distilled"):
            s = r[arm]
            assert s["n"] == 2 and s["ci_low"] <= s["mean"] <= s["ci_high"]
    assert res["rows"][0]["real"]["values"] == res["rows"][0]["distilled"]["values"]  # same dense θ_0 run
    assert len(res["tests"]) == 2 + 5 and all("p_holm" in t for t in res["tests"])
    ps = sorted(t["p_holm"] for t in res["tests"])
    assert ps == sorted(ps) and all(0 <= p <= 1 for p in ps)
    assert [v["claim"] for v in res["verdicts"]] == [1, 2, 3]
    html = (out / "report.html").read_text()
    assert res["landscape"]["seed"] == 0 and len(res["landscape"]["distilled"]["loss"]) == 5
    assert "Verdict" in html and html.count("<svg") >= 2 and "LMC barrier" in html
    assert main(["study", str(tiny_preset(tmp_path)), "--runs", str(runs), "-q"]) == 0  # resumes


def nothing_written(runs: Path) -> bool:
    return not runs.exists() or not [p for p in runs.iterdir() if p.name not in (".tmp", ".locks")]


def test_bad_rate_exit_2(tmp_path, capsys):
    runs = tmp_path / "runs"
    for rate in (1.5, 0.0):
        assert main(["study", str(tiny_preset(tmp_path, rate=rate)), "--runs", str(runs), "-q"]) == 2
        assert "rate" in capsys.readouterr().err
    assert nothing_written(runs)


def test_inner_set_of_another_shape_exit_2(tmp_path, capsys):
    rng = np.random.default_rng(0)
    npz = tmp_path / "big.npz"
    np.savez(npz, x_train=rng.normal(size=(60, 1, 12, 12)).astype(np.float32), y_train=np.arange(60) % 10,
             x_test=rng.normal(size=(20, 1, 12, 12)).astype(np.float32), y_test=np.arange(20) % 10)
    assert main(["distill-data", "--data", f"npz:{npz}", "--ipc", "2", "--method", "random",
                 "--runs", str(tmp_path / "other"), "-q"]) == 0
    (other,) = (tmp_path / "other").glob("distill-data-*")
    capsys.readouterr()
    runs = tmp_path / "runs"
    spec = tiny_preset(tmp_path, inner_data=f"distilled:{other}")
    assert main(["study", str(spec), "--runs", str(runs), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "inputs" in err
    assert nothing_written(runs)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_spec_builder_rejects_rate(rate):
    from compresslab.errors import UserError

    with pytest.raises(UserError, match="rate"):
        lottery_spec(data_spec("digits"), MLP, RECIPE, 0, rounds=1, rate=rate)


def test_two_dimensional_landscape(tmp_path):
    runs = tmp_path / "runs"
    assert main(["study", str(tiny_preset(tmp_path, landscape_dims=2)), "--runs", str(runs), "-q"]) == 0
    (out,) = (runs / "studies").iterdir()
    scan = json.loads((out / "results.json").read_text())["landscape"]
    for arm in ("real", "distilled"):
        grid = scan[arm]["loss"]
        assert scan[arm]["dims"] == 2 and [len(row) for row in grid] == [5] * 5
        assert grid[2][2] == pytest.approx(scan[arm]["summary"]["centre_loss"])  # the centre is the ticket
    html = (out / "report.html").read_text()
    assert "2-D loss landscape, real-IMP" in html and "2-D loss landscape, distilled-IMP" in html


def test_landscape_dims_outside_1_2_exit_2(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["study", str(tiny_preset(tmp_path, landscape_dims=3)), "--runs", str(runs), "-q"]) == 2
    assert "landscape_dims" in capsys.readouterr().err and nothing_written(runs)
