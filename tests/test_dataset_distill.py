"""Dataset distillation (issue 15, part 1): ConvNet-3, the DM / DC losses, herding, the
distill-data step, the ``distilled:DIR`` dataset, and the bad-input cases through the CLI."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compresslab.cli import main
from compresslab.compress.dataset_distill import dc_distance, distill_dataset, dm_loss, herding, random_subset
from compresslab.data import load_dataset
from compresslab.models import create_model
from compresslab.steps.specs import data_spec, distill_data_spec

torch.set_num_threads(1)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# -- ConvNet-3 ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, final", [((1, 28, 28), 4), ((3, 32, 32), 4)])
def test_convnet_parameter_count_by_hand(shape, final):
    c, w, k = shape[0], 128, 10
    conv = lambda cin: cin * w * 9 + w  # noqa: E731  (3x3 kernels + biases)
    norm = 2 * w  # GroupNorm(w, w) scale + shift
    expected = conv(c) + norm + 2 * (conv(w) + norm) + (w * final * final) * k + k
    m = create_model("convnet", num_classes=k, in_channels=c, input_shape=shape)
    assert n_params(m) == expected
    assert m(torch.zeros(2, *shape)).shape == (2, k)
    assert m.embed(torch.zeros(2, *shape)).shape == (2, w * final * final)
    assert isinstance(m.features[1], torch.nn.GroupNorm) and m.features[1].num_groups == w


def test_convnet_options():
    m = create_model("convnet", num_classes=3, in_channels=1, input_shape=(1, 8, 8), width=4, depth=2, norm="none")
    assert not any(isinstance(x, (torch.nn.GroupNorm, torch.nn.BatchNorm2d)) for x in m.modules())
    # 8x8, first conv padded by 3 -> 12 -> pool 6 -> conv 6 -> pool 3
    assert m.classifier.in_features == 4 * 3 * 3
    bn = create_model("convnet", num_classes=3, in_channels=1, input_shape=(1, 8, 8), width=4, norm="batch")
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in bn.modules())


# -- losses --------------------------------------------------------------------------------------


def test_dm_loss_against_hand_computation():
    r0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])      # mean (2, 3)
    s0 = torch.tensor([[0.0, 0.0]])                  # mean (0, 0): 4 + 9 = 13
    r1 = torch.tensor([[1.0, -1.0], [1.0, 1.0], [1.0, 0.0]])  # mean (1, 0)
    s1 = torch.tensor([[3.0, 1.0], [1.0, 1.0]])      # mean (2, 1): 1 + 1 = 2
    assert float(dm_loss([r0, r1], [s0, s1])) == pytest.approx(15.0)
    s0.requires_grad_(True)
    dm_loss([r0], [s0]).backward()                   # d/ds ||m_r - s||^2 = 2 (s - m_r)
    assert torch.allclose(s0.grad, torch.tensor([[-4.0, -6.0]]))


def test_dc_distance_against_hand_computation():
    lin_r = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    lin_s = torch.tensor([[0.0, 1.0], [0.0, 3.0]])   # rows: cos 0, cos 1 -> 1 + 0
    conv_r = torch.ones(2, 1, 2, 2)
    conv_s = torch.stack([torch.ones(1, 2, 2), -torch.ones(1, 2, 2)])  # cos 1, cos -1 -> 0 + 2
    bias_r, bias_s = torch.tensor([1.0, 2.0]), torch.tensor([-5.0, 7.0])  # 1-D: ignored
    d = dc_distance([lin_r, conv_r, bias_r], [lin_s, conv_s, bias_s])
    assert float(d) == pytest.approx(3.0, abs=1e-5)
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    manual = sum(1 - float(a[i] @ b[i]) / (float(a[i].norm() * b[i].norm()) + 1e-6) for i in range(3))
    assert float(dc_distance([a], [b])) == pytest.approx(manual, rel=1e-5)


def test_siamese_augmentation_is_shared_and_differentiable():
    from compresslab.compress.dataset_distill import siamese_augment

    g = torch.Generator().manual_seed(0)
    real = torch.randn(5, 1, 8, 8, generator=g)
    for _ in range(12):  # every transform family comes up
        syn = real[:2].clone().requires_grad_(True)
        a, b = siamese_augment([real, syn], g)
        assert a.shape == real.shape and b.shape == syn.shape
        assert torch.allclose(a[:2], b, atol=1e-6)  # the same transform and parameters on both batches
        b.sum().backward()
        assert syn.grad is not None


# -- selection -----------------------------------------------------------------------------------


def brute_force_herding(f: torch.Tensor, k: int) -> list[int]:
    """The definition, with no vectorisation: step t keeps the i making the running mean closest to mu."""
    mu = f.double().mean(0)
    chosen: list[int] = []
    for t in range(1, k + 1):
        best = min((i for i in range(len(f)) if i not in chosen),
                   key=lambda i: float((mu - (sum((f[j].double() for j in chosen), torch.zeros_like(mu))
                                                + f[i].double()) / t).norm()))
        chosen.append(best)
    return chosen


def test_herding_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(9, 3, generator=g)
    for k in (1, 4, 9):
        assert herding(f, k).tolist() == brute_force_herding(f, k)
    # the first pick is the example nearest the mean
    assert int(herding(f, 1)) == int((f - f.mean(0)).norm(dim=1).argmin())


def test_random_subset_per_class():
    y = torch.tensor([0, 1, 0, 2, 1, 0, 2, 2, 1])
    idx = random_subset(y, 2, 3, torch.Generator().manual_seed(1))
    assert y[idx].tolist() == [0, 0, 1, 1, 2, 2] and len(set(idx.tolist())) == 6


def test_distill_dataset_shapes_and_points_seen():
    data = load_dataset("digits")
    model = {"name": "convnet", "options": {"width": 4, "depth": 2}}
    dm = distill_dataset(data, method="dm", ipc=2, model=model, iterations=3, batch_real=16, seed=0)
    assert dm.x.shape == (20, 1, 8, 8) and dm.y.tolist() == [c for c in range(10) for _ in range(2)]
    assert dm.train_points_seen == 20 + 3 * 10 * 16 and len(dm.losses) == 3
    real = distill_dataset(data, method="dm", ipc=2, model=model, iterations=0, seed=0)
    assert not torch.equal(real.x, dm.x)  # the images moved
    assert torch.equal(real.x, distill_dataset(data, method="random", ipc=2, seed=0).x)  # init = random real
    dc = distill_dataset(data, method="dc", ipc=1, model=model, iterations=2, batch_real=8, seed=0)
    assert dc.x.shape == (10, 1, 8, 8) and torch.isfinite(dc.x).all()


# -- the step, the loader, the CLI ------------------------------------------------------------


def distil(tmp_path: Path, *extra: str) -> Path:
    args = ["distill-data", "--data", "digits", "--ipc", "2", "--method", "dm", "-o", "width=4", "-o", "depth=2",
            "--iterations", "3", "--batch-real", "16", "--runs", str(tmp_path / "runs"), "-q", *extra]
    assert main(args) == 0
    (d,) = (tmp_path / "runs").glob("distill-data-*")
    return d


def test_step_round_trip_and_train_on_it(tmp_path, capsys):
    d = distil(tmp_path)
    out = capsys.readouterr().out.split()
    assert out == [str(d), f"distilled:{d.resolve()}"]
    info = json.loads((d / "distilled.json").read_text())
    assert info["format"] == "compresslab-distilled/1" and info["data"] == data_spec("digits", 0.1, 0)
    assert info["input_shape"] == [1, 8, 8] and info["num_classes"] == 10 and info["ipc"] == 2
    z = np.load(d / "distilled.npz")
    assert z["x"].dtype == np.float32 and z["x"].shape == (20, 1, 8, 8) and z["y"].dtype == np.int64

    ds, source = load_dataset(f"distilled:{d}", seed=5), load_dataset("digits")
    assert torch.equal(ds.x_train, torch.from_numpy(z["x"])) and torch.equal(ds.y_train, torch.from_numpy(z["y"]))
    for split in ("val", "test"):  # the source's own splits, not re-standardised
        assert all(torch.equal(a, b) for a, b in zip(ds.split(split), source.split(split)))
    assert ds.num_classes == 10 and "synthetic" in ds.notes[0]

    runs = str(tmp_path / "runs")
    assert main(["train", "--model", "convnet", "-o", "width=4", "--data", f"distilled:{d.resolve()}",
                 "--epochs", "2", "--runs", runs, "-q", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert 0 <= trained["accuracy"]["test"] <= 1
    assert main(["distill-data", "--data", "digits", "--ipc", "2", "--method", "dm", "-o", "width=4", "-o", "depth=2",
                 "--iterations", "3", "--batch-real", "16", "--runs", runs, "-q", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["reused"] is True


def test_spec_keeps_only_used_keys():
    data = data_spec("digits")
    assert distill_data_spec(data, method="random", ipc=3, seed=0, model={"name": "convnet", "options": {}},
                             iterations=7) == {"data": data, "method": "random", "ipc": 3, "seed": 0}
    assert set(distill_data_spec(data, method="herding", ipc=1, seed=0)) == {"data", "method", "ipc", "seed",
                                                                               "model", "herding_epochs"}
    dm = distill_data_spec(data, method="dm", ipc=1, seed=0, iterations=None)
    assert dm["iterations"] == 1000 and dm["lr_img"] == 1.0 and dm["init"] == "real"
    assert distill_data_spec(data, method="dc", ipc=1, seed=0)["init"] == "noise"


def nothing_written(runs: Path) -> bool:
    return not runs.exists() or not [p for p in runs.iterdir() if p.name not in (".tmp", ".locks")]


@pytest.mark.parametrize("args, words", [
    (["--ipc", "100000"], "larger than class"),
    (["--ipc", "0"], "at least 1"),
    (["--ipc", "1", "--method", "magic"], "--method"),
    (["--ipc", "1", "--init", "zeros"], "--init"),
    (["--ipc", "1", "--model", "mlp"], "embed()"),
])
def test_bad_input_one_line_exit_2(tmp_path, capsys, args, words):
    runs = tmp_path / "runs"
    model = [] if "--model" in args else ["-o", "width=4"]
    assert main(["distill-data", "--data", "digits", *model, "--runs", str(runs), "-q", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and len(err.splitlines()) == 1
    assert nothing_written(runs)


def test_not_a_distill_step_dir(tmp_path, capsys):
    runs = tmp_path / "runs"
    for bad in (tmp_path / "missing", tmp_path):
        assert main(["train", "--model", "convnet", "-o", "width=4", "--data", f"distilled:{bad}", "--epochs", "1",
                     "--runs", str(runs), "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert "distill-data" in err and len(err.splitlines()) == 1
    assert nothing_written(runs)


def test_distilled_set_with_model_of_other_input_shape(tmp_path, capsys):
    """A teacher trained on 12x12 images cannot distil on a distilled digits (8x8) set."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "big.npz"
    np.savez(npz, x_train=rng.normal(size=(60, 1, 12, 12)).astype(np.float32), y_train=np.arange(60) % 10,
             x_test=rng.normal(size=(20, 1, 12, 12)).astype(np.float32), y_test=np.arange(20) % 10)
    runs = tmp_path / "runs"
    assert main(["train", "--model", "convnet", "-o", "width=4", "--data", f"npz:{npz}", "--epochs", "1",
                 "--runs", str(runs), "-q"]) == 0
    teacher = capsys.readouterr().out.strip()
    d = distil(tmp_path)
    capsys.readouterr()
    before = sorted(p.name for p in runs.iterdir())
    assert main(["distill", teacher, "--student", "convnet", "-o", "width=4", "--data", f"distilled:{d}",
                 "--epochs", "1", "--runs", str(runs), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot run on" in err
    assert sorted(p.name for p in runs.iterdir()) == before


def test_herding_and_random_steps_via_cli(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    seen = {}
    for method in ("random", "herding"):
        assert main(["distill-data", "--data", "digits", "--ipc", "3", "--method", method, "-o", "width=4",
                     "--runs", runs, "-q", "--json"]) == 0
        r = json.loads(capsys.readouterr().out)
        seen[method] = r["train_points_seen"]
        x = load_dataset(r["data"]).x_train
        source = load_dataset("digits").x_train
        # selected images are real training images
        assert all(any(torch.equal(a, b) for b in source) for a in x[:5])
    n_train = load_dataset("digits").sizes()["train"]
    assert seen == {"random": 30, "herding": 2 * n_train}  # herding: 1 training epoch + 1 feature pass


# -- the study kind and its preset ---------------------------------------------------------------


def tiny_preset(tmp_path: Path) -> Path:
    """The shipped preset, shrunk: digits, a 4-wide ConvNet-2, a few iterations and epochs."""
    import yaml

    from compresslab.study.spec import load_spec

    spec = load_spec(None, preset="dataset-distillation")
    raw = spec.model_dump(mode="json", exclude={"device", "deterministic"})
    assert raw["kind"] == "dataset-distillation" and raw["ipcs"] == [1, 10]
    assert {m["method"] for m in raw["methods"]} >= {"dm", "random", "herding"}
    raw.update(data="digits", ipcs=[1, 2], eval_seeds=[0, 1], model={"name": "convnet", "options": {"width": 4,
                                                                                                     "depth": 2}})
    raw["recipe"]["epochs"] = 3
    for m in raw["methods"]:
        m.update({k: 2 for k in ("iterations",) if m.get(k)}, ipcs=None)
        if m.get("batch_real"):
            m["batch_real"] = 8
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_study_kind_through_cli(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert main(["study", str(tiny_preset(tmp_path)), "--runs", str(runs), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "vs random at ipc 1" in printed
    (out,) = (runs / "studies").iterdir()
    results = json.loads((out / "results.json").read_text())
    rows = {(r["method"], r["ipc"]): r for r in results["rows"]}
    assert set(rows) >= {("dm", 1), ("dm", 2), ("random", 1), ("random", 2), ("herding", 2)}
    for r in rows.values():
        assert len(r["accuracy"]) == 2 and r["summary"]["n"] == 2
        assert r["summary"]["ci_low"] <= r["summary"]["mean"] <= r["summary"]["ci_high"]
        assert r["grid"]["levels"] == 8 and r["grid"]["width"] > 0
    assert rows[("random", 1)]["sets"] == 2 and rows[("dm", 1)]["sets"] == 1  # a random subset per seed
    assert {(t["method"], t["ipc"]) for t in results["tests"]} >= {("dm", 1), ("herding", 2)}
    html = (out / "report.html").read_text()
    assert "Verdict" in html and html.count('shape-rendering="crispEdges"') == len(rows)
    # the evaluation steps name their set by parent role: no store path in any spec
    for spec_file in runs.glob("train-distilled-*/spec.json"):
        assert str(runs) not in spec_file.read_text()


def test_image_grid_and_its_svg():
    import base64

    from compresslab.report.dataset_distillation import grid_pixels, grid_svg, image_grid

    x = np.arange(4 * 1 * 3 * 2, dtype=np.float32).reshape(4, 1, 3, 2)
    g = grid_pixels(x, ipc=2)  # 2 classes x 2 images, 1 px padding
    assert g.shape == (2 * 4 + 1, 2 * 3 + 1) and g[0].tolist() == [255] * 7
    assert g[1, 1] == 0 and g[3, 2] == 255 and g[5, 4] == 0  # each image min-max scaled: first 0, last 255
    assert grid_pixels(x, ipc=1).shape == (3 + 2, 4 * 3 + 1)  # ipc 1: one row of classes

    grid = image_grid(x, ipc=2)
    q = np.frombuffer(base64.b64decode(grid["pixels"]), dtype=np.uint8).reshape(grid["height"], grid["width"])
    assert q.shape == g.shape and np.array_equal(q, (g.astype(int) * 8) // 256)
    one_white_run = {"width": 3, "height": 1, "levels": 8, "pixels": base64.b64encode(bytes([7, 7, 0])).decode()}
    svg = grid_svg(one_white_run, scale=2, title="t")
    assert '<path fill="rgb(255,255,255)" d="M0 0h2v1h-2z"/>' in svg and svg.count("<path") == 1
    assert 'width="6" height="2"' in svg


def test_help_teaches(capsys):
    assert main(["distill-data", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Examples" in out and "--json" in out and "distilled:" in out
