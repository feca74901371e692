"""Hutchinson Hessian trace/diagonal, filter-normalised directions, loss landscapes, the
field plot and ``compresslab landscape``: checked against exact Hessians and hand formulas."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, hessian

from compresslab.data.core import Dataset
from compresslab.measure.landscape import (
    filter_normalised_direction,
    landscape_summary,
    loss_landscape,
    recompute_bn,
)
from compresslab.measure.sharpness import diagonal_summary, hessian_diagonal, hessian_trace, rademacher
from compresslab.train.fit import evaluate_logits


def _mlp(seed=0, bn=False):
    torch.manual_seed(seed)
    layers = [nn.Linear(3, 4)] + ([nn.BatchNorm1d(4)] if bn else []) + [nn.Tanh(), nn.Linear(4, 3)]
    return nn.Sequential(*layers).double()


def _xy(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _exact_hessian(model, x, y):
    """The full Hessian of the mean cross-entropy over the flattened parameters."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])
    buffers = dict(model.named_buffers())

    def loss(theta):
        parts, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            parts[n] = theta[i:i + k].view(s)
            i += k
        return F.cross_entropy(functional_call(model, {**parts, **buffers}, (x,)), y)

    model.eval()
    return hessian(loss)(flat), names, shapes


def _flat(d, names):
    return torch.cat([d[n].reshape(-1) for n in names])


def test_each_sample_is_v_H_v_with_the_exact_hessian_over_batches():
    model, (x, y) = _mlp(), _xy()
    H, names, _ = _exact_hessian(model, x, y)
    r = hessian_trace(model, x, y, samples=5, batch_size=7, seed=3)  # 4 uneven batches
    for s, q in enumerate(r["per_sample"]):
        v = _flat(rademacher(model, seed=3, index=s), names)
        assert q == pytest.approx(float(v @ H @ v), rel=1e-9, abs=1e-12)
    assert r["params"] == H.shape[0] == sum(p.numel() for p in model.parameters())
    assert r["samples"] == 5 and r["trace"] == pytest.approx(sum(r["per_sample"]) / 5)
    sd = torch.tensor(r["per_sample"]).std().item()
    assert r["stderr"] == pytest.approx(sd / math.sqrt(5))


def test_trace_converges_to_the_exact_trace_within_the_stderr():
    model, (x, y) = _mlp(seed=2, bn=True), _xy()
    model.train()
    model(x)  # some running statistics, then eval mode throughout
    H, names, _ = _exact_hessian(model, x, y)
    r = hessian_trace(model, x, y, samples=600, batch_size=256, seed=0)
    exact = float(H.trace())
    assert abs(r["trace"] - exact) < 4 * r["stderr"]
    # the stderr matches the Rademacher variance 2 Σ_{i≠j} H_ij² / S
    off = float((H ** 2).sum() - (H.diagonal() ** 2).sum())
    assert r["stderr"] == pytest.approx(math.sqrt(2 * off / 600), rel=0.2)
    assert model.training is False  # eval before and after


def test_diagonal_converges_and_sums_to_the_trace():
    model, (x, y) = _mlp(seed=4), _xy()
    H, names, _ = _exact_hessian(model, x, y)
    diag = hessian_diagonal(model, x, y, samples=800, seed=5)
    est = _flat(diag, names)
    # per entry: variance of (v ⊙ Hv)_i is Σ_{j≠i} H_ij²
    sd = ((H ** 2).sum(1) - H.diagonal() ** 2).sqrt() / math.sqrt(800)
    assert bool(((est - H.diagonal()).abs() <= 4.5 * sd + 1e-12).all())
    tr = hessian_trace(model, x, y, samples=800, seed=5)
    assert float(est.sum()) == pytest.approx(tr["trace"], rel=1e-9)
    summ = diagonal_summary(diag)
    assert summ["0.weight"]["n"] == 12 and summ["0.weight"]["sum"] == pytest.approx(float(diag["0.weight"].sum()))


def test_mask_restricts_to_the_kept_coordinates():
    model, (x, y) = _mlp(seed=6), _xy()
    g = torch.Generator().manual_seed(0)
    mask = {"0.weight": torch.rand(4, 3, generator=g) > 0.5, "2.weight": torch.rand(3, 4, generator=g) > 0.3}
    H, names, shapes = _exact_hessian(model, x, y)
    keep = torch.cat([mask[n].reshape(-1) if n in mask else torch.ones(math.prod(s), dtype=torch.bool)
                      for n, s in zip(names, shapes)])
    r = hessian_trace(model, x, y, samples=400, seed=1, mask=mask)
    exact_kept = float(H.diagonal()[keep].sum())
    assert r["params"] == int(keep.sum())
    assert abs(r["trace"] - exact_kept) < 4 * r["stderr"]
    v = _flat(rademacher(model, seed=1, index=0, mask=mask), names)
    assert bool((v[~keep] == 0).all()) and r["per_sample"][0] == pytest.approx(float(v @ H @ v), rel=1e-9)
    diag = hessian_diagonal(model, x, y, samples=3, seed=1, mask=mask)
    assert bool((diag["0.weight"][~mask["0.weight"]] == 0).all())
    assert diagonal_summary(diag, mask)["0.weight"]["n"] == int(mask["0.weight"].sum())


class Separable(nn.Module):
    """Example i (one-hot input e_i) has logits (w_i, 0): the loss Hessian is diagonal,
    H_ii = σ(w_i)(1 - σ(w_i)) · (count of examples i) / N."""

    def __init__(self, n):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1.5, 2.0, n, dtype=torch.float64))

    def forward(self, x):
        z = x @ self.w
        return torch.stack([z, torch.zeros_like(z)], 1)


def test_diagonal_hessian_is_estimated_exactly_by_every_sample():
    n = 6
    model = Separable(n)
    x = torch.eye(n, dtype=torch.float64).repeat(2, 1)
    y = torch.tensor([0, 1] * n)
    s = torch.sigmoid(model.w.detach())
    exact = s * (1 - s) * 2 / (2 * n)
    r = hessian_trace(model, x, y, samples=4, batch_size=5, seed=9)
    for q in r["per_sample"]:
        assert q == pytest.approx(float(exact.sum()), rel=1e-12)
    assert r["stderr"] == pytest.approx(0.0, abs=1e-12)
    d = hessian_diagonal(model, x, y, samples=1, seed=2)["w"]
    torch.testing.assert_close(d, exact, rtol=1e-12, atol=1e-15)


def test_bad_hutchinson_inputs():
    from compresslab.errors import UserError

    model, (x, y) = _mlp(), _xy()
    with pytest.raises(UserError):
        hessian_trace(model, x, y, samples=0)
    with pytest.raises(UserError):
        hessian_trace(model, x[:0], y[:0])
    with pytest.raises(UserError):
        hessian_trace(model, x, y, mask={"nope": torch.ones(2, dtype=torch.bool)})


# --- filter-normalised directions -------------------------------------------------------------


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x):
        return self.fc(F.relu(self.bn(self.conv(x))).flatten(1))


def test_filter_normalised_direction_matches_each_filter_norm():
    torch.manual_seed(0)
    model = ConvNet()
    d = filter_normalised_direction(model, seed=3)
    for name in ("conv.weight", "fc.weight"):
        w = dict(model.named_parameters())[name].detach()
        torch.testing.assert_close(d[name].flatten(1).norm(dim=1), w.flatten(1).norm(dim=1))
        assert not torch.allclose(d[name], w)  # a random direction, not θ
    for name in ("conv.bias", "bn.weight", "bn.bias", "fc.bias"):
        assert bool((d[name] == 0).all())
    again = filter_normalised_direction(model, seed=3)
    assert all(torch.equal(d[k], again[k]) for k in d)
    other = filter_normalised_direction(model, seed=4)
    assert not torch.equal(d["fc.weight"], other["fc.weight"])
    keep_1d = filter_normalised_direction(model, seed=3, ignore=None)
    torch.testing.assert_close(keep_1d["fc.bias"], model.fc.bias.detach())


def test_filter_normalised_direction_with_a_mask():
    torch.manual_seed(1)
    model = ConvNet()
    g = torch.Generator().manual_seed(0)
    mask = {"fc.weight": torch.rand(3, 64, generator=g) > 0.8}
    mask["fc.weight"][0] = False  # a filter pruned away entirely stays zero
    with torch.no_grad():
        model.fc.weight.mul_(mask["fc.weight"])
    d = filter_normalised_direction(model, seed=0, mask=mask)["fc.weight"]
    assert bool((d[~mask["fc.weight"]] == 0).all())
    torch.testing.assert_close(d.norm(dim=1), model.fc.weight.detach().norm(dim=1))
    assert float(d[0].norm()) == 0.0


# --- loss landscapes -------------------------------------------------------------------------


class Parabola(nn.Module):
    """log-softmax of class 0 is exactly -w²: the cross-entropy on label 0 is w², so along
    direction 1 from w0 the loss is (w0 + a)²; the error is 1 when w² > log 2."""

    def __init__(self, w0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w0], dtype=torch.float64))

    def forward(self, x):
        q = (self.w ** 2).sum()
        z = torch.stack([-q, torch.log(-torch.expm1(-q))])
        return z.expand(x.shape[0], 2)


def _data(x, y, name="toy"):
    return Dataset(name, x, y, x[:0], y[:0], x, y, num_classes=int(y.max()) + 1)


def test_exact_quadratic_gives_the_parabola_1d_and_2d():
    w0 = 0.3
    x = torch.zeros(5, 1, dtype=torch.float64)
    data = _data(x, torch.zeros(5, dtype=torch.long))
    model = Parabola(w0)
    r = loss_landscape(model, data, [{"w": torch.tensor([1.0], dtype=torch.float64)}], span=1.0, points=9)
    assert r["dims"] == 1 and len(r["coords"]) == 9 and r["coords"][0] == -1.0 and r["coords"][-1] == 1.0
    for a, loss, err in zip(r["coords"], r["loss"], r["error"]):
        assert loss == pytest.approx((w0 + a) ** 2, rel=1e-6, abs=1e-7)  # logits come back as float32
        assert err == (1.0 if (w0 + a) ** 2 > math.log(2) else 0.0)
    assert r["centre"]["loss"] == pytest.approx(w0 ** 2, rel=1e-6)
    s = landscape_summary(r)  # at ±0.5: ((w0+.5)² + (w0-.5)²)/2 - w0² = 0.25, exact on the grid
    assert s["sharpness"] == pytest.approx(0.25, rel=1e-5)
    assert s["max_rise"] == pytest.approx((w0 + 1) ** 2 - w0 ** 2, rel=1e-5)
    # 2-D along d1 = 1, d2 = 0.5: (w0 + a + b/2)²
    r2 = loss_landscape(model, data, [{"w": torch.tensor([1.0], dtype=torch.float64)},
                                      {"w": torch.tensor([0.5], dtype=torch.float64)}], span=0.5, points=5)
    for i, a in enumerate(r2["coords"]):
        for j, b in enumerate(r2["coords"]):
            assert r2["loss"][i][j] == pytest.approx((w0 + a + b / 2) ** 2, rel=1e-6, abs=1e-7)
    assert model.w.item() == w0


def test_centre_equals_evaluate_at_theta_and_the_model_is_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(40, 3), torch.randint(0, 3, (40,))
    data = _data(x, y)
    model.train()
    model(x)
    model.eval()
    before = copy.deepcopy(model.state_dict())
    dirs = [filter_normalised_direction(model, seed=s) for s in (1, 2)]
    r = loss_landscape(model, data, dirs, span=0.5, points=3, split="test", max_examples=30)
    ref = recompute_bn(copy.deepcopy(model), x[:30])
    logits = evaluate_logits(ref, x[:30])
    assert r["loss"][1][1] == pytest.approx(float(F.cross_entropy(logits, y[:30])), rel=1e-6)
    assert r["centre"]["loss"] == r["loss"][1][1]
    assert r["error"][1][1] == pytest.approx(1 - float((logits.argmax(1) == y[:30]).float().mean()))
    assert r["n"] == 30 and r["split"] == "test" and r["dims"] == 2
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training is False
    # even points: θ is off the grid, the centre is still evaluated at θ
    r4 = loss_landscape(model, data, dirs[:1], span=0.5, points=4, split="test", max_examples=30)
    assert r4["centre"]["loss"] == pytest.approx(r["centre"]["loss"], rel=1e-6)


def test_bad_landscape_inputs():
    from compresslab.errors import UserError

    model = Parabola(0.1)
    x = torch.zeros(3, 1, dtype=torch.float64)
    data = _data(x, torch.zeros(3, dtype=torch.long))
    d = {"w": torch.ones(1, dtype=torch.float64)}
    for kwargs, dirs in (({"span": 0.0}, [d]), ({"points": 2}, [d]), ({}, [d, d, d]),
                         ({}, [{"w": torch.ones(2)}]), ({}, [{"v": torch.ones(1)}]), ({"split": "val"}, [d])):
        with pytest.raises(UserError):
            loss_landscape(model, data, dirs, **kwargs)


# --- the field plot and the command ----------------------------------------------------------


def test_field_colours_cells_by_value_with_hover_and_centre():
    from compresslab.report.svg import RAMP, field, ramp

    c = [-1.0, 0.0, 1.0]
    z = [[a * a + 2 * b * b + 1 for b in c] for a in c]
    svg = field(c, c, z, title="t", xlabel="d1", ylabel="d2", label="loss")
    assert svg.count("<rect") == 9 + 2  # cells, frame, colour bar
    assert "d1 -1, d2 1: loss 4" in svg and "d1 0, d2 0: loss 1</title>" in svg
    assert f'fill="{ramp(0.0)}"' in svg and f'fill="{ramp(1.0)}"' in svg
    assert ramp(0.0) == "rgb({},{},{})".format(*RAMP[0]) and ramp(2.0) == ramp(1.0)
    assert "<polygon" in svg  # the star at θ
    # log colouring: the geometric middle gets the middle colour
    svg = field([0.0, 1.0, 2.0], [0.0], [[1.0], [10.0], [100.0]], label="loss", log=True, centre=None)
    assert f'fill="{ramp(0.5)}"' in svg and "<polygon" not in svg


@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory):
    from compresslab.api import train_model

    runs = tmp_path_factory.mktemp("lruns")
    r = train_model("mlp", "digits", options={"widths": [16]}, runs=runs,
                    overrides={"optimizer": "adam", "lr": 0.01, "weight_decay": 0, "epochs": 2, "batch_size": 64})
    return Path(r["checkpoint"])


def _cli(capsys, *args):
    from compresslab.cli import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_2d_svg_json(capsys, digits_mlp, tmp_path):
    from compresslab.runs.checkpoint import load_checkpoint
    from compresslab.steps.common import dataset

    out = tmp_path / "plots" / "l.svg"
    code, stdout, err = _cli(capsys, "landscape", digits_mlp, "--data", "digits", "--dims", 2, "--points", 3,
                             "--span", 0.5, "--hessian-samples", 4, "--max-examples", 100, "--out", out,
                             "--quiet", "--json")
    assert code == 0, err
    r = json.loads(stdout)
    model, _ = load_checkpoint(digits_mlp)
    n_params = sum(p.numel() for p in model.parameters())
    assert r["params"] == r["hessian"]["params"] == n_params and r["pruned"] == 0 and not r["masked"]
    assert r["hessian"]["samples"] == 4 and len(r["hessian"]["per_sample"]) == 4
    land = r["landscape"]
    assert land["dims"] == 2 and land["coords"] == [-0.5, 0.0, 0.5] and len(land["loss"]) == 3
    assert r["data_split"] == {"seed": 0, "val_fraction": 0.1, "from": "spec.json"}
    x, y = dataset("digits", 0.1, 0).split("train")
    expect = float(F.cross_entropy(evaluate_logits(model, x[:100]), y[:100]))
    assert land["loss"][1][1] == pytest.approx(expect, rel=1e-5) == r["summary"]["centre_loss"]
    assert r["summary"]["max_rise"] == pytest.approx(max(map(max, land["loss"])) - expect, rel=1e-5)
    assert r["out"] == str(out) and out.read_text().startswith("<svg") and out.read_text().count("<title>d1 ") == 9
    # without --json: the summary in words
    code, stdout, err = _cli(capsys, "landscape", digits_mlp, "--data", "digits", "--points", 3,
                             "--hessian-samples", 2, "--max-examples", 50, "--quiet")
    assert code == 0, err
    assert "Hessian trace (Hutchinson, 2 samples)" in stdout and "sharpness" in stdout


def test_cli_pruned_checkpoint_png(capsys, digits_mlp, tmp_path):
    from compresslab.runs.checkpoint import load_checkpoint, save_checkpoint

    model, _ = load_checkpoint(digits_mlp)
    w = model.hidden[0][0].weight
    with torch.no_grad():
        w[:, ::2] = 0.0
    zeros = int((w == 0).sum())
    save_checkpoint(tmp_path / "pruned", model)
    out = tmp_path / "l.png"
    code, stdout, err = _cli(capsys, "landscape", tmp_path / "pruned", "--data", "digits", "--points", 5,
                             "--hessian-samples", 3, "--max-examples", 64, "--out", out, "--quiet", "--json")
    assert code == 0, err
    r = json.loads(stdout)
    n_params = sum(p.numel() for p in model.parameters())
    assert r["masked"] and r["pruned"] == zeros and r["hessian"]["params"] == n_params - zeros
    assert r["data_split"]["from"] == "default"  # no spec.json: seed 0, val_fraction 0.1
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(r["landscape"]["loss"]) == 5
    code, stdout, err = _cli(capsys, "landscape", tmp_path / "pruned", "--data", "digits", "--points", 3,
                             "--hessian-samples", 2, "--max-examples", 64, "--no-mask", "--quiet", "--json")
    assert code == 0 and json.loads(stdout)["hessian"]["params"] == n_params


def test_cli_bad_input_writes_nothing(capsys, digits_mlp, tmp_path):
    import numpy as np

    other = tmp_path / "other.npz"  # 4x4 images: not the 8x8 the checkpoint was built for
    g = np.random.default_rng(0)
    np.savez(other, x_train=g.random((40, 4, 4), dtype=np.float32), y_train=np.arange(40) % 10,
             x_test=g.random((20, 4, 4), dtype=np.float32), y_test=np.arange(20) % 10)
    out = tmp_path / "bad.svg"
    base = ["landscape", digits_mlp, "--data", "digits", "--out", out, "--quiet"]
    for extra, says in ((["--span", 0], "--span"), (["--points", 2], "--points"), (["--dims", 3], "--dims"),
                        (["--hessian-samples", -1], "--hessian-samples")):
        code, _, err = _cli(capsys, *base, *extra)
        assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _cli(capsys, "landscape", digits_mlp, "--data", f"npz:{other}", "--out", out, "--quiet")
    assert code == 2 and "cannot run on" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = _cli(capsys, "landscape", digits_mlp, "--data", "digits", "--out", tmp_path / "l.txt")
    assert code == 2 and ".svg or a .png" in err
    assert not out.exists() and not (tmp_path / "l.txt").exists()


def test_cli_help_teaches(capsys):
    code, out, _ = _cli(capsys, "landscape", "--help")
    assert code == 0 and "Examples" in out and "--json" in out and "--hessian-samples" in out
