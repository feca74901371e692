"""Distilled pruning (issue 15, part 2): IMP whose search loop trains on a small inner set.

McDermott & Cummings, "Distilled Pruning: Using Synthetic Data to Win the Lottery" (2023):
the train-prune-rewind loop runs on the inner set; each round's mask, applied to θ_0, is then
trained once on the real data, and that network is the round's ticket.
"""
import copy
import json

import pytest
import torch

from compresslab.cli import main
from compresslab.compress.lottery import imp
from compresslab.compress.prune import apply_masks, global_magnitude_masks, prunable_parameters
from compresslab.data.core import Dataset
from compresslab.errors import UserError
from compresslab.models import create_model
from compresslab.steps import dataset
from compresslab.study.lottery import VAL_FRACTION
from compresslab.train.fit import accuracy, fit
from compresslab.train.recipe import Recipe

RECIPE = Recipe(optimizer="adam", lr=0.03, weight_decay=0.0, epochs=2, batch_size=32)
INNER = RECIPE.model_copy(update={"epochs": 3})
N_REAL, N_INNER = 256, 40


def _blobs(n_train, seed=0, classes=4):
    g = torch.Generator().manual_seed(0)
    centers = 2.0 * torch.randn(classes, 1, 16, generator=g)
    g.manual_seed(seed + 1)

    def split(n):
        y = torch.arange(n) % classes
        return centers[y] + torch.randn(n, 1, 16, generator=g), y

    (xt, yt), (xv, yv), (xs, ys) = split(n_train), split(64), split(64)
    return Dataset(f"blobs{n_train}", xt, yt, xv, yv, xs, ys, classes)


def _model():
    torch.manual_seed(0)
    return create_model("cnn1d", num_classes=4, in_channels=1, input_shape=(1, 16), width=4, depth=2, hidden=8)


@pytest.fixture(scope="module")
def real():
    return _blobs(N_REAL)


@pytest.fixture(scope="module")
def inner():
    return _blobs(N_INNER, seed=7)


def test_loop_trains_on_inner_set_and_tickets_on_real(real, inner):
    model = _model()
    init = copy.deepcopy(model)
    starts = []  # (round, phase, steps per epoch) of every fit
    res = imp(model, real, RECIPE, rounds=2, rate=0.3, seed=0, inner_data=inner, inner_recipe=INNER,
              random_reinit_control=True,
              callback=lambda e: e["event"] == "start" and starts.append((e["round"], e["phase"],
                                                                          e["steps_per_epoch"])))
    real_steps, inner_steps = -(-N_REAL // 32), -(-N_INNER // 32)
    assert starts == [(0, "inner", inner_steps), (0, "ticket", real_steps),
                      (1, "inner", inner_steps), (1, "ticket", real_steps), (1, "control", real_steps),
                      (2, "ticket", real_steps), (2, "control", real_steps)]  # last round: no inner fit
    assert [c["points_inner"] for c in res.costs] == [N_INNER * 3, N_INNER * 3, 0]
    assert [c["points_real"] for c in res.costs] == [N_REAL * 2] * 3
    assert all(c["seconds"] > 0 for c in res.costs)
    assert [r["sparsity"] for r in res.records] == pytest.approx([0.0, 0.3, 1 - 0.7 ** 2], abs=0.01)

    # Round 1 by hand: train θ_0 on the inner set, prune 30% by magnitude, train that mask from θ_0 on
    # the real data; the ticket's accuracy is that network's.
    loop = copy.deepcopy(init)
    fit(loop, inner, INNER, seed=0)
    masks = global_magnitude_masks(prunable_parameters(loop), 0.3,
                                   {n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(loop).items()})
    ticket = copy.deepcopy(init)
    apply_masks(ticket, masks)
    fit(ticket, real, RECIPE, seed=0, after_step=lambda m: apply_masks(m, masks))
    assert res.records[1]["test_acc"] == accuracy(ticket, real.x_test, real.y_test)
    # the mask differs from the one real-data IMP finds (the loop really used the inner set)
    real_loop = copy.deepcopy(init)
    fit(real_loop, real, RECIPE, seed=0)
    real_masks = global_magnitude_masks(prunable_parameters(real_loop), 0.3, masks={
        n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(real_loop).items()})
    assert any(not torch.equal(masks[n], real_masks[n]) for n in masks)
    # the model ends as the final ticket: masked, with the final masks
    for n, p in prunable_parameters(model).items():
        assert torch.all(p[~res.masks[n]] == 0)
    assert res.rewind_state.keys() == init.state_dict().keys()
    assert all(torch.equal(res.rewind_state[k], v) for k, v in init.state_dict().items())


def test_real_imp_reports_costs_too(real):
    res = imp(_model(), real, RECIPE, rounds=1, seed=0)
    assert [c["points_real"] for c in res.costs] == [N_REAL * 2, N_REAL * 2]
    assert [c["points_inner"] for c in res.costs] == [0, 0]


def test_inner_set_must_match(real):
    other_classes = Dataset("three", real.x_train[:30], real.y_train[:30] % 3, real.x_val, real.y_val,
                            real.x_test, real.y_test, 3)
    with pytest.raises(UserError, match="classes"):
        imp(_model(), real, RECIPE, rounds=1, inner_data=other_classes)
    other_shape = Dataset("wide", torch.zeros(8, 1, 20), torch.zeros(8, dtype=torch.long), real.x_val, real.y_val,
                          real.x_test, real.y_test, 4)
    with pytest.raises(UserError, match="inputs"):
        imp(_model(), real, RECIPE, rounds=1, inner_data=other_shape)
    with pytest.raises(UserError, match="rewind_epoch"):
        imp(_model(), real, RECIPE, rounds=1, rewind_epoch=1, inner_data=_blobs(N_INNER))


def test_cli_rejects_mismatched_inner_data(tmp_path):
    out = tmp_path / "lt"
    args = ["lottery", "--model", "mlp", "--data", "digits@200", "--epochs", "1", "--rounds", "1", "--out", str(out)]
    assert main([*args, "--inner-data", "mnist1d@100"]) == 2  # (1, 40) inputs against (1, 8, 8)
    assert main([*args, "--inner-data", "digits@50", "--inner-epochs", "0"]) == 2
    assert main([*args, "--inner-data", "digits@50", "--rewind-epoch", "1", "--epochs", "2"]) == 2
    assert main([*args[:-4], "--rounds", "0", "--out", str(out), "--inner-data", "digits@50"]) == 2
    assert not out.exists()


def test_cli_lottery_inner_data_end_to_end(tmp_path, capsys):
    out = tmp_path / "lt"
    assert main(["lottery", "--model", "mlp", "--data", "digits@200", "--inner-data", "digits@40", "--epochs", "1",
                 "--inner-epochs", "2", "--rounds", "1", "--no-lmc", "--no-control", "--out", str(out), "-q",
                 "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "lottery.json").read_text())
    assert saved["inner_data"] == "digits@40" and saved["inner_epochs"] == 2
    assert printed["records"] == saved["records"]
    costs = saved["costs"]
    n_inner = len(dataset("digits@40", VAL_FRACTION, 0).y_train)  # @40 minus the validation split
    n_real = len(dataset("digits@200", VAL_FRACTION, 0).y_train)
    assert [c["points_inner"] for c in costs] == [n_inner * 2, 0]
    assert [c["points_real"] for c in costs] == [n_real * 1, n_real * 1]
    assert saved["records"][1]["sparsity"] == pytest.approx(0.2, abs=0.01)
    assert (out / "lottery.png").stat().st_size > 0
