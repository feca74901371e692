"""Attention transfer, hints, teacher signals and noise teachers."""
import math

import pytest
import torch
from torch import nn

from compresslab.compress.distill import (
    ATTerm,
    TeacherSignal,
    at_loss,
    attention_map,
    distill,
    match_points,
    noise_logits,
    validate_distill,
)
from compresslab.data import Dataset
from compresslab.errors import UserError
from compresslab.models import create_model
from compresslab.train import Recipe
from compresslab.train.losses import StepContext


def _data(n=96, length=40, k=4, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    x = torch.randn(n, 1, length, generator=g) + y.view(-1, 1, 1).float()
    return Dataset("toy", x, y, x[:16], y[:16], x[:16], y[:16], num_classes=k)


def _cnn(width, k=4, seed=0):
    torch.manual_seed(seed)
    return create_model("cnn1d", num_classes=k, in_channels=1, input_shape=(1, 40), width=width, hidden=16)


def test_attention_map_by_hand_1d_and_2d():
    # two channels, three positions: channel mean of f² = [(1+9)/2, (4+0)/2, 0] = [5, 2, 0]
    f = torch.tensor([[[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]])
    expected = torch.tensor([[5.0, 2.0, 0.0]]) / math.sqrt(29.0)
    assert torch.allclose(attention_map(f), expected)
    f2 = f.view(1, 2, 3, 1).expand(1, 2, 3, 2)  # a 2-D map: each row repeated
    a2 = attention_map(f2)
    assert a2.shape == (1, 6)
    assert torch.allclose(a2, torch.tensor([[5.0, 5.0, 2.0, 2.0, 0.0, 0.0]]) / math.sqrt(58.0))
    assert torch.allclose(a2.norm(dim=1), torch.ones(1))
    with pytest.raises(UserError, match="spatial"):
        attention_map(torch.randn(4, 8))


def test_at_loss_by_hand():
    s = [torch.tensor([[1.0, 0.0]]), torch.tensor([[0.6, 0.8]])]
    t = [torch.tensor([[0.0, 1.0]]), torch.tensor([[0.6, 0.8]])]
    # point 1: mean((1,-1)²) = 1; point 2: 0; mean over points = 0.5
    assert at_loss(s, t).item() == pytest.approx(0.5)
    # channel count does not matter, scale does not matter: at(2f) == at(f)
    f = torch.randn(3, 5, 7)
    assert at_loss([attention_map(2 * f)], [attention_map(f)]).item() == pytest.approx(0.0, abs=1e-12)


def test_at_term_uses_cached_teacher_maps_by_index():
    maps = {"stage1": torch.nn.functional.normalize(torch.rand(10, 20), dim=1)}
    signal = TeacherSignal(logits=torch.zeros(10, 4), maps=maps)
    term = ATTerm(signal, {"stage1": "stage1"})
    feat = torch.randn(3, 8, 20)
    idx = torch.tensor([1, 4, 9])
    ctx = StepContext(nn.Identity(), torch.zeros(3), torch.zeros(3), idx, torch.zeros(3, 4), {"stage1": feat})
    expected = (attention_map(feat) - maps["stage1"][idx]).pow(2).mean()
    assert term(ctx).item() == pytest.approx(expected.item())


def test_match_points_defaults_to_shared_spatial_points_and_checks_sizes():
    s, t = _cnn(8), _cnn(32)
    x = torch.randn(2, 1, 40)
    assert match_points(s, t, x, None, term="at") == {"stage1": "stage1", "stage2": "stage2", "stage3": "stage3"}
    assert "hidden" in match_points(s, t, x, None, term="hint")
    with pytest.raises(UserError, match="same spatial size"):
        match_points(s, t, x, {"stage1": "stage2"}, term="at")


def test_noise_teacher_logits_are_fixed_and_in_range():
    u = noise_logits("uniform-noise", 50, 10, low=-2, high=3, seed=7)
    assert torch.equal(u, noise_logits("uniform-noise", 50, 10, low=-2, high=3, seed=7))
    assert u.min() >= -2 and u.max() <= 3 and u.shape == (50, 10)
    g = noise_logits("gaussian-noise", 4000, 10, sigma=2.0, seed=1)
    assert g.std().item() == pytest.approx(2.0, rel=0.05)
    assert not torch.equal(g, noise_logits("gaussian-noise", 4000, 10, sigma=2.0, seed=2))
    with pytest.raises(UserError, match="high > low"):
        noise_logits("uniform-noise", 5, 3, low=1, high=1)


def test_noise_teacher_gives_each_example_the_same_target_every_epoch(monkeypatch):
    """Record the KD targets the loss receives, per training example, over three epochs."""
    import compresslab.compress.distill as D

    data = _data()
    fixed = noise_logits("gaussian-noise", 96, 4, seed=3)
    seen: dict[int, list[torch.Tensor]] = {}
    batch_idx = {}
    real_call, real_loss = D.KDTerm.__call__, D.kd_loss

    def call(self, ctx):
        batch_idx["idx"] = ctx.idx
        return real_call(self, ctx)

    def loss(student, teacher, temperature, *, teacher_log_probs=None):
        target = teacher_log_probs if teacher_log_probs is not None else torch.log_softmax(teacher / temperature, 1)
        for i, row in zip(batch_idx["idx"].tolist(), target):
            seen.setdefault(i, []).append(row.detach().clone())
        return real_loss(student, teacher, temperature, teacher_log_probs=teacher_log_probs)

    monkeypatch.setattr(D.KDTerm, "__call__", call)
    monkeypatch.setattr(D, "kd_loss", loss)
    distill(fixed, _cnn(8), data, Recipe(epochs=3, batch_size=32, lr=0.05), temperature=2.0, seed=0)
    assert len(seen) == 96 and all(len(v) == 3 for v in seen.values())
    for i, rows in seen.items():
        expected = torch.log_softmax(fixed[i] / 2.0, 0)
        assert all(torch.allclose(r, expected, atol=1e-6) for r in rows)
        assert all(torch.equal(r, rows[0]) for r in rows)


@pytest.mark.parametrize("teacher, kwargs, message", [
    ("net", {"loss": {"kd": 1.0, "dance": 1.0}}, "loss: unknown term 'dance'; available terms: at, ce, hint, kd"),
    ("net", {"loss": {"kd": "x"}}, "must be a number"),
    ("net", {"loss": {"kd": 1.0}, "temperature": 0.0}, "temperature must be > 0"),
    ("noise", {"loss": {"kd": 1.0, "at": 10}}, "need a teacher network"),
    ("noise", {"loss": {"ce": 1.0, "hint": 1.0}}, "need a teacher network"),
    ("short-noise", {"loss": {"kd": 1.0}}, "shape"),
    ("net", {"loss": {"ce": 1.0, "at": 10}, "at_points": {"stage1": "stage2"}}, "same spatial size"),
    ("net", {"loss": {"ce": 1.0, "hint": 1.0}, "hint_points": ["nowhere"]}, "unknown feature"),
])
def test_validate_distill_rejects_bad_input_without_training(teacher, kwargs, message):
    teacher = {"net": _cnn(32, seed=5), "noise": torch.zeros(96, 4), "short-noise": torch.zeros(95, 4)}[teacher]
    student = _cnn(8, seed=1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    with pytest.raises(UserError, match=message):
        validate_distill(teacher, student, _data(), **kwargs)
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_validate_distill_accepts_good_input_and_changes_nothing():
    teacher, student = _cnn(32, seed=5), _cnn(8, seed=1)
    teacher.train()
    before = {k: v.clone() for k, v in student.state_dict().items()}
    rng = torch.get_rng_state()
    assert validate_distill(teacher, student, _data(), loss={"kd": 0.5, "ce": 0.5, "at": 100, "hint": 1.0}) is None
    assert validate_distill(torch.zeros(96, 4), student, _data(), loss={}) is None  # the default loss: kd and ce
    assert teacher.training and student.training and torch.equal(rng, torch.get_rng_state())
    assert all(torch.equal(before[k], v) for k, v in student.state_dict().items())


def test_noise_teacher_refuses_feature_terms():
    with pytest.raises(UserError, match="need a teacher network"):
        distill(torch.zeros(96, 4), _cnn(8), _data(), Recipe(epochs=1), loss={"kd": 0.9, "at": 1000})
    with pytest.raises(UserError, match="shape"):
        distill(torch.zeros(95, 4), _cnn(8), _data(), Recipe(epochs=1))


def test_cached_and_live_teacher_give_the_same_training():
    """Without augmentation, caching teacher logits + attention maps must not change the result."""
    data, recipe = _data(), Recipe(epochs=2, batch_size=32, lr=0.05)
    teacher = _cnn(32, seed=5)
    loss = {"ce": 0.1, "kd": 0.9, "at": 1000}
    a, b = _cnn(8, seed=1), _cnn(8, seed=1)
    distill(teacher, a, data, recipe, loss=loss, seed=0)
    distill(teacher, b, data, recipe, loss=loss, seed=0, cache_teacher=False)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.allclose(pa, pb, atol=1e-5)


def test_attention_transfer_pulls_student_maps_toward_the_teacher():
    data, recipe = _data(), Recipe(epochs=4, batch_size=32, lr=0.05)
    teacher = _cnn(32, seed=5)
    from compresslab.compress.distill import teacher_attention_maps

    t_maps = teacher_attention_maps(teacher, data.x_train, ["stage1", "stage2"])

    def gap(student):
        s_maps = teacher_attention_maps(student, data.x_train, ["stage1", "stage2"])
        return at_loss(list(s_maps.values()), list(t_maps.values())).item()

    ce, at = _cnn(8, seed=1), _cnn(8, seed=1)
    distill(teacher, ce, data, recipe, loss={"ce": 1.0}, seed=0)
    distill(teacher, at, data, recipe, loss={"ce": 1.0, "at": 1000}, at_points=["stage1", "stage2"], seed=0)
    assert gap(at) < 0.5 * gap(ce)


def test_hint_trains_a_regressor_and_leaves_the_student_architecture_alone():
    data, recipe = _data(), Recipe(epochs=2, batch_size=32, lr=0.05)
    teacher, student = _cnn(32, seed=5), _cnn(8, seed=1)
    names_before = [n for n, _ in student.named_parameters()]
    result = distill(teacher, student, data, recipe, loss={"ce": 1.0, "hint": 1.0}, hint_points=["stage2"], seed=0)
    assert [n for n, _ in student.named_parameters()] == names_before
    assert all(math.isfinite(h["loss"]) for h in result.history)
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_distill_cli_runs_reuses_and_reports_similarity(tmp_path, capsys):
    import json

    from compresslab.api import train_model
    from compresslab.cli import main

    runs = tmp_path / "runs"
    teacher = train_model("cnn1d", "mnist1d", options={"width": 8, "depth": 2, "hidden": 16},
                          overrides={"epochs": 2, "optimizer": "adam", "lr": 0.01}, runs=runs)["checkpoint"]
    args = ["distill", teacher, "--student", "cnn1d", "-o", "width=4", "-o", "depth=2", "--data", "mnist1d",
            "--runs", str(runs), "--quiet", "--json"]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["loss"] == {"kd": 0.9, "ce": 0.1} and not first["reused"]
    f = first["vs_teacher"]
    assert f["agreement"] + f["disagreement"] == pytest.approx(1.0)
    assert f["accuracy_b"] == pytest.approx(first["accuracy"]["test"], abs=1e-6)
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["reused"]
    # attention transfer, and a noise teacher, are separate steps
    assert main([*args, "--loss", "ce=1,at=1000", "--at-point", "stage1"]) == 0
    at = json.loads(capsys.readouterr().out)
    assert at["loss"] == {"ce": 1.0, "at": 1000.0} and at["checkpoint"] != first["checkpoint"]
    assert main([*args, "--loss", "ce=1,hint=1", "--hint-point", "stage2=stage2"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] == {"ce": 1.0, "hint": 1.0}
    assert main([*args, "--teacher-kind", "gaussian-noise", "--sigma", "2"]) == 0
    noisy = json.loads(capsys.readouterr().out)
    assert noisy["teacher_kind"] == "gaussian-noise" and noisy["checkpoint"] not in (first["checkpoint"], at["checkpoint"])


@pytest.mark.parametrize("extra, message", [
    (["--loss", "kd=abc"], "must be a number"),
    (["--loss", "nonsense"], "expected weighted terms"),
    (["--loss", "kd=1,dance=2"], "unknown term"),
    (["--teacher-kind", "oracle"], "--teacher-kind"),
    (["--teacher-kind", "uniform-noise", "--loss", "kd=1,at=10"], "need a teacher network"),
    (["--at-point", "nowhere", "--loss", "ce=1,at=10"], "unknown feature"),
])
def test_distill_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, extra, message):
    from compresslab.api import train_model
    from compresslab.cli import main

    runs = tmp_path / "runs"
    teacher = train_model("cnn1d", "mnist1d", options={"width": 4, "depth": 2, "hidden": 8},
                          overrides={"epochs": 1}, runs=runs)["checkpoint"]
    before = sorted(p.name for p in runs.iterdir())
    code = main(["distill", teacher, "--student", "cnn1d", "-o", "width=4", "--data", "mnist1d",
                 "--runs", str(runs), "--quiet", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1
    assert sorted(p.name for p in runs.iterdir() if p.name != ".tmp") == [b for b in before if b != ".tmp"]


def test_augmented_training_runs_the_teacher_live_and_refuses_a_cache():
    data = _data()
    recipe = Recipe(epochs=1, batch_size=32, lr=0.05, augment="crop", crop_padding=2)
    teacher, student = _cnn(32, seed=5), _cnn(8, seed=1)
    result = distill(teacher, student, data, recipe, loss={"ce": 0.1, "kd": 0.9, "at": 100}, seed=0)
    assert result.steps == 3
    with pytest.raises(UserError, match="augment"):
        distill(teacher, _cnn(8), data, recipe, cache_teacher=True)
