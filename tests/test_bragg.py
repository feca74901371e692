"""The Bragg-peak task: the generator, the pseudo-Voigt fit, regression through train /
evaluate / compare, and BraggNN."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from compresslab.cli import main
from compresslab.data import bragg, load_dataset
from compresslab.errors import UserError
from compresslab.measure.function import compare, compare_outputs, mean_distance
from compresslab.models import create_model
from compresslab.train import Recipe, StepContext, compose_loss, default_loss, fit

SMALL = "bragg:synthetic@300"


# ----------------------------------------------------------------------- generator


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_profile_is_half_maximum_at_half_the_fwhm(eta):
    """Both components of the pseudo-Voigt are 1/2 at FWHM/2 from the centre, on each axis."""
    fx, fy = 4.0, 2.0  # the half widths land on pixel centres: (5 ± 2, 5) and (5, 5 ± 1)
    p = bragg.pseudo_voigt(5.0, 5.0, fx, fy, eta, 10.0, 3.0)
    assert p[5, 5] == pytest.approx(13.0)
    for row, col in [(5, 3), (5, 7), (4, 5), (6, 5)]:
        assert p[row, col] == pytest.approx(3.0 + 5.0)


def test_noise_free_centre_is_recovered_by_least_squares():
    x, y, params = bragg.generate(25, seed=3, noise=False, clutter=0.0)
    assert np.allclose(y[:, 0], params["cx"] - 5) and np.allclose(y[:, 1], params["cy"] - 5)
    fitted = bragg.fit_centres(x)
    assert np.abs(fitted - y).max() < 1e-3


def test_generated_patches():
    x, y, p = bragg.generate(500, seed=0)
    assert x.shape == (500, 1, 11, 11) and x.dtype == np.float32 and y.shape == (500, 2)
    assert np.allclose(x.min(axis=(1, 2, 3)), 0) and np.allclose(x.max(axis=(1, 2, 3)), 1)  # min-max per patch
    assert np.abs(y).max() <= 1.0
    # the brightest pixel of the smoothed patch sits near the true centre for most peaks
    brightest = np.stack(np.unravel_index(x[:, 0].reshape(500, -1).argmax(1), (11, 11)), 1)[:, ::-1] - 5
    assert np.mean(np.linalg.norm(brightest - y, axis=1) < 1.5) > 0.8
    again, _, _ = bragg.generate(500, seed=0)
    assert np.array_equal(x, again)


def test_dataset_is_registered_as_regression():
    d = load_dataset(SMALL)
    assert d.task == "regression" and d.num_classes == 2 and d.input_shape == (1, 11, 11)
    assert d.sizes() == {"train": 270, "val": 30, "test": 300}
    for split in ("train", "val", "test"):
        x, y = d.split(split)
        assert y.dtype == torch.float32 and y.shape == (len(x), 2)
        assert float(x.amin()) == 0.0 and float(x.amax()) == 1.0  # not standardised
    other = load_dataset(SMALL, seed=1)
    assert torch.equal(load_dataset("bragg:synthetic").x_test, load_dataset("bragg:synthetic", seed=1).x_test)
    assert not torch.equal(d.x_val, other.x_val)  # the seed picks the split only
    assert load_dataset("digits").task == "classification"
    with pytest.raises(UserError, match="bragg:synthetic"):
        load_dataset("bragg:other")


def test_pseudo_voigt_baseline():
    d = load_dataset(SMALL)
    r = bragg.pseudo_voigt_baseline(d, limit=40)
    assert r["n"] == 40 and r["seconds_per_patch"] > 0
    y = d.y_test[:40].numpy()
    assert r["centre_error_px"] == pytest.approx(np.linalg.norm(bragg.fit_centres(d.x_test[:40]) - y, axis=1).mean())
    assert r["centre_error_px"] < 0.5
    with pytest.raises(UserError, match="bragg"):
        bragg.pseudo_voigt_baseline(load_dataset("digits"))


# ---------------------------------------------------------------------- regression


def test_mse_term_and_label_checks():
    out, y = torch.randn(6, 2), torch.randn(6, 2)
    ctx = StepContext(model=None, x=None, y=y, idx=torch.arange(6), logits=out)
    total, parts = compose_loss({"mse": 1.0})(ctx)
    assert float(total) == pytest.approx(float(((out - y) ** 2).mean()))
    with pytest.raises(UserError, match="'mse'"):
        compose_loss({"ce": 1.0})(ctx)
    labels = StepContext(model=None, x=None, y=torch.tensor([0, 1, 1, 0, 1, 0]), idx=torch.arange(6), logits=out)
    with pytest.raises(UserError, match="'ce'"):
        compose_loss({"mse": 1.0})(labels)


def test_fit_defaults_to_mse_on_regression_data():
    d = load_dataset(SMALL)
    assert default_loss(d) == {"mse": 1.0} and default_loss(load_dataset("digits")) == {"ce": 1.0}
    recipe = Recipe(optimizer="adam", lr=3e-3, epochs=4, batch_size=64)
    runs = []
    for loss in (None, {"mse": 1.0}):
        torch.manual_seed(0)
        model = create_model("mlp", num_classes=2, in_channels=1, input_shape=(1, 11, 11), widths=[32])
        runs.append((fit(model, d, recipe, loss=loss, seed=0), model))
    (a, model), (b, _) = runs
    assert a.history == [{**h, "seconds": a.history[i]["seconds"], "samples_per_s": a.history[i]["samples_per_s"]}
                         for i, h in enumerate(b.history)]  # the default is exactly mse
    assert "acc" not in a.history[0] and a.history[-1]["loss"] < a.history[0]["loss"]
    assert a.history[-1]["error"] < a.history[0]["error"]
    with torch.no_grad():
        model.eval()
        assert F.mse_loss(model(d.x_test), d.y_test) < d.y_test.pow(2).mean()  # better than predicting the middle


def test_compare_outputs_against_numpy():
    rng = np.random.default_rng(0)
    a, b, t = rng.normal(size=(50, 2)), rng.normal(size=(50, 2)), rng.normal(size=(50, 2))
    r = compare_outputs(a, b, t)
    assert r["mse"] == pytest.approx(np.mean((a - b) ** 2))
    assert r["centre_distance_px"] == pytest.approx(np.mean(np.sqrt(((a - b) ** 2).sum(1))))
    assert r["centre_error_px_b"] == pytest.approx(np.mean(np.sqrt(((b - t) ** 2).sum(1))))
    assert compare(a, b, t, task="regression") == r
    assert "agreement" in compare(a, b, task="classification")
    assert mean_distance(a, a) == 0.0


def run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_evaluate_compare_on_bragg(capsys, tmp_path):
    runs = tmp_path / "runs"
    results = []
    for model, opts in (("braggnn", ["-o", "channels=[8,8]", "-o", "dense=[8]"]), ("mlp", ["-o", "widths=[16]"])):
        code, out, err = run(capsys, "train", "--model", model, "--data", SMALL, "--epochs", 2, "--lr", 0.01,
                             "--runs", runs, "--quiet", "--json", *opts)
        assert code == 0, err
        results.append(json.loads(out))
    a, b = results
    assert "accuracy" not in a and set(a["centre_error_px"]) == {"val", "test"}
    d = load_dataset(SMALL)
    logits = np.load(f"{a['checkpoint']}/logits_test.npy")
    reference = np.linalg.norm(logits - d.y_test.numpy(), axis=1).mean()
    assert a["centre_error_px"]["test"] == pytest.approx(reference, rel=1e-5)
    metrics = json.loads(open(f"{a['checkpoint']}/metrics.json").read())
    assert "error" in metrics["history"][0] and "accuracy" not in metrics

    code, out, err = run(capsys, "train", "--model", "mlp", "--data", SMALL, "--epochs", 2, "--lr", 0.01,
                         "--runs", runs, "--quiet", "-o", "widths=[16]")
    assert code == 0 and out.strip() == b["checkpoint"] and "mean centre error: " in err and "val " in err

    code, out, err = run(capsys, "evaluate", a["checkpoint"], "--data", SMALL, "--json")
    ev = json.loads(out)
    assert code == 0 and ev["splits"]["test"]["centre_error_px"] == pytest.approx(a["centre_error_px"]["test"])
    assert ev["splits"]["test"]["loss"] == pytest.approx(np.mean((logits - d.y_test.numpy()) ** 2), rel=1e-5)
    code, out, _ = run(capsys, "evaluate", a["checkpoint"], "--data", SMALL)
    assert code == 0 and "test centre error" in out and " px" in out

    code, out, _ = run(capsys, "compare", a["checkpoint"], a["checkpoint"], "--data", SMALL, "--json")
    same = json.loads(out)
    assert set(same) == {"mse", "centre_distance_px", "centre_error_px_a", "centre_error_px_b"}
    assert same["mse"] == 0 and same["centre_distance_px"] == 0
    code, out, _ = run(capsys, "compare", a["checkpoint"], b["checkpoint"], "--data", SMALL, "--json")
    ab = json.loads(out)
    assert ab["centre_error_px_a"] == pytest.approx(a["centre_error_px"]["test"], rel=1e-5)
    assert ab["centre_error_px_b"] == pytest.approx(b["centre_error_px"]["test"], rel=1e-5)
    assert ab["centre_distance_px"] > 0


def test_cross_entropy_on_regression_data_is_a_user_error():
    d = load_dataset(SMALL)
    model = create_model("mlp", num_classes=2, in_channels=1, input_shape=(1, 11, 11), widths=[8])
    with pytest.raises(UserError, match="regression targets"):
        fit(model, d, Recipe(epochs=1), loss={"ce": 1.0})


# ------------------------------------------------------------------------- braggnn


def test_braggnn_matches_its_layer_list():
    m = create_model("braggnn", num_classes=2, in_channels=1, input_shape=(1, 11, 11))
    convs = (1 * 64 * 9 + 64) + (64 * 32 * 9 + 32) + (32 * 8 * 9 + 8)
    attention = 3 * (64 * 32 + 32) + (32 * 64 + 64)
    dense = sum(i * o + o for i, o in zip((200, 16, 8, 4, 2), (16, 8, 4, 2, 2)))
    assert sum(p.numel() for p in m.parameters()) == convs + attention + dense == 33_172
    assert m(torch.rand(3, 1, 11, 11)).shape == (3, 2)
    wide = create_model("braggnn", num_classes=2, in_channels=1, input_shape=(1, 15, 15), channels=[16, 8],
                        dense=[32])
    assert wide(torch.rand(2, 1, 15, 15)).shape == (2, 2)
    with pytest.raises(UserError, match="larger than"):
        create_model("braggnn", num_classes=2, in_channels=1, input_shape=(1, 5, 5))
    with pytest.raises(UserError, match="patches"):
        create_model("braggnn", num_classes=2, in_channels=1, input_shape=(1, 40))


def test_non_local_block_against_its_formula():
    torch.manual_seed(0)
    block = create_model("braggnn", num_classes=2, in_channels=1).attention
    x = torch.randn(2, 64, 3, 4)
    q, k, v = (conv(x).flatten(2) for conv in (block.theta, block.phi, block.g))  # (n, c, positions)
    expected = torch.empty_like(v)
    for i in range(12):  # each position: a softmax-weighted mean of g over all positions
        w = torch.softmax(torch.einsum("nc,ncj->nj", q[:, :, i], k), dim=1)
        expected[:, :, i] = torch.einsum("nj,ncj->nc", w, v)
    out = x + block.out(expected.reshape(2, -1, 3, 4))
    assert torch.allclose(block(x), out, atol=1e-5)
