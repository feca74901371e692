"""compresslab.train: recipe validation, schedules, loss composition and the fit loop.

Models and datasets are built by hand here (tiny, synthetic) so these tests don't
depend on compresslab.models / compresslab.data loaders.
"""
from __future__ import annotations

import copy
import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compresslab.data.core import Dataset
from compresslab.errors import UserError
from compresslab.train import (
    FitResult,
    Recipe,
    StepContext,
    accuracy,
    compose_loss,
    evaluate_logits,
    fit,
    list_terms,
)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and OpenMP spin-waits make them very slow
    when other processes keep the cores busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_data(n: int = 192, shape: tuple[int, ...] = (2, 8, 8), classes: int = 3, seed: int = 0) -> Dataset:
    """A linearly separable problem: y = argmax(x·W)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    w = torch.randn(math.prod(shape), classes, generator=g)
    y = (x.flatten(1) @ w).argmax(1)
    empty_x, empty_y = x[:0], y[:0]
    return Dataset("synthetic", x, y, empty_x, empty_y, empty_x, empty_y, num_classes=classes)


def conv_net(in_ch: int = 2, classes: int = 3, dim: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dim == 2 else (nn.Conv1d, nn.BatchNorm1d)
    pool = nn.AdaptiveAvgPool2d(1) if dim == 2 else nn.AdaptiveAvgPool1d(1)
    return nn.Sequential(conv(in_ch, 8, 3, padding=1), bn(8), nn.ReLU(), pool, nn.Flatten(), nn.Linear(8, classes))


def linear_net(shape=(2, 8, 8), classes: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), classes))


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def first_step_loss(model, data, recipe, **kw) -> float:
    events = []
    fit(model, data, recipe, callback=events.append, max_steps=1, **kw)
    return next(e["loss"] for e in events if e["event"] == "step")


# -- determinism -------------------------------------------------------------------------------


def test_same_seed_bit_identical_and_other_seed_differs():
    data = make_data()
    recipe = Recipe(epochs=2, batch_size=32, lr=0.1, augment="crop-flip", crop_padding=2, warmup_epochs=0.5)
    init = conv_net()
    runs = []
    for seed in (0, 0, 1):
        model = copy.deepcopy(init)
        fit(model, data, recipe, seed=seed)
        runs.append(model)
    assert states_equal(runs[0], runs[1])  # weights and BN buffers, bit for bit
    assert not states_equal(runs[0], runs[2])
    assert not states_equal(runs[0], init)


def test_crop_on_1d_inputs_is_deterministic():
    data = make_data(n=96, shape=(2, 16))
    recipe = Recipe(epochs=1, batch_size=32, augment="crop-flip", crop_padding=3)  # flip skipped for 1-D
    init = conv_net(dim=1)
    a, b = copy.deepcopy(init), copy.deepcopy(init)
    fit(a, data, recipe, seed=3)
    fit(b, data, recipe, seed=3)
    assert states_equal(a, b)


def test_random_resized_crop_recipe_is_seeded_and_needs_images():
    data = make_data(n=64)
    init = conv_net()
    runs = []
    for augment in ("rrc-flip", "rrc-flip", "crop-flip"):
        model = copy.deepcopy(init)
        fit(model, data, Recipe(epochs=1, batch_size=32, augment=augment), seed=0)
        runs.append(model)
    assert states_equal(runs[0], runs[1]) and not states_equal(runs[0], runs[2])
    with pytest.raises(UserError, match="needs 2-D images"):
        fit(conv_net(dim=1), make_data(n=32, shape=(2, 16)), Recipe(epochs=1, augment="rrc"))


# -- recipe, optimizers, schedules ---------------------------------------------------------------


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
@pytest.mark.parametrize("schedule", ["cosine", "multistep", "onecycle", "constant"])
def test_every_optimizer_and_schedule_runs(optimizer, schedule):
    data = make_data(n=64)
    lr = 0.05 if optimizer == "sgd" else 1e-3
    result = fit(conv_net(), data, Recipe(optimizer=optimizer, schedule=schedule, lr=lr, epochs=2, batch_size=32))
    assert isinstance(result, FitResult)
    assert result.steps == 4 and len(result.history) == 2
    assert all(math.isfinite(h["loss"]) for h in result.history)


def lrs(recipe: Recipe, steps_per_epoch: int) -> list[float]:
    """The lr used at each optimizer step."""
    opt = recipe.make_optimizer([nn.Parameter(torch.zeros(1))])
    sched = recipe.make_scheduler(opt, steps_per_epoch)
    out = []
    for _ in range(recipe.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_cosine_with_warmup():
    lr = lrs(Recipe(lr=0.1, epochs=10, warmup_epochs=1, schedule="cosine"), steps_per_epoch=10)
    assert lr[0] == pytest.approx(0.01)  # (step + 1) / warmup_steps
    assert lr[4] == pytest.approx(0.05)
    assert lr[9] == pytest.approx(0.1)
    assert lr[10] == pytest.approx(0.1)  # cosine starts at the peak after warm-up
    assert lr[55] == pytest.approx(0.05)  # halfway through the remaining 90 steps
    assert lr[99] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))


def test_multistep():
    lr = lrs(Recipe(lr=0.1, epochs=4, schedule="multistep", milestones=[0.5, 0.75], gamma=0.1), 25)
    assert lr[0] == pytest.approx(0.1) and lr[49] == pytest.approx(0.1)
    assert lr[50] == pytest.approx(0.01) and lr[74] == pytest.approx(0.01)
    assert lr[75] == pytest.approx(0.001) and lr[99] == pytest.approx(0.001)


def test_onecycle():
    lr = lrs(Recipe(lr=0.1, epochs=10, schedule="onecycle"), 10)
    assert lr[0] == pytest.approx(0.1 / 25)  # torch's default div_factor
    assert max(lr) == pytest.approx(0.1)
    assert lr.index(max(lr)) == 29  # pct_start 0.3 of 100 steps
    assert lr[-1] < 1e-4


def test_constant_schedule_and_fit_uses_the_scheduler():
    assert set(lrs(Recipe(lr=0.1, epochs=2, schedule="constant"), 5)) == {0.1}
    data = make_data(n=64)
    init = linear_net()
    # warm-up from (1/warmup_steps) * lr: the first step moves weights less than constant lr does
    a, b = copy.deepcopy(init), copy.deepcopy(init)
    fit(a, data, Recipe(epochs=4, batch_size=64, schedule="constant", warmup_epochs=4, momentum=0, weight_decay=0),
        max_steps=1)
    fit(b, data, Recipe(epochs=4, batch_size=64, schedule="constant", momentum=0, weight_decay=0), max_steps=1)
    da = float((a[1].weight - init[1].weight).abs().sum().detach())
    db = float((b[1].weight - init[1].weight).abs().sum().detach())
    assert da == pytest.approx(db / 4, rel=1e-4)


def test_recipe_validation_errors_are_one_line_user_errors():
    cases = {
        "epochs": ({"epochs": -1}, "recipe: epochs: Input should be greater than or equal to 0"),
        "extra": ({"lrate": 0.1}, "recipe: lrate: Extra inputs are not permitted"),
        "lr": ({"lr": 0}, "recipe: lr: Input should be greater than 0"),
        "optimizer": ({"optimizer": "lion"}, "recipe: optimizer: Input should be 'sgd', 'adam' or 'adamw'"),
        "milestones": ({"milestones": [1.5]}, "recipe: milestones:"),
        "smoothing": ({"label_smoothing": 1.0}, "recipe: label_smoothing:"),
        "onecycle": ({"schedule": "onecycle", "warmup_epochs": 1}, "recipe: warmup_epochs: onecycle has its own"),
        "nesterov": ({"optimizer": "adam", "nesterov": True}, "recipe: nesterov: needs optimizer sgd"),
    }
    for data, expected in cases.values():
        with pytest.raises(UserError) as info:
            Recipe.from_dict(data)
        msg = str(info.value)
        assert msg.startswith(expected) and "\n" not in msg
    with pytest.raises(UserError, match="expected a mapping"):
        Recipe.from_dict([1, 2])
    assert Recipe.from_dict(None) == Recipe()
    assert Recipe.from_dict({"epochs": 3, "schedule": "onecycle"}).epochs == 3


# -- losses ------------------------------------------------------------------------------------


def _ctx(logits, y):
    return StepContext(model=nn.Identity(), x=logits, y=y, idx=torch.arange(len(y)), logits=logits)


def test_label_smoothing_matches_torch():
    torch.manual_seed(0)
    logits, y = torch.randn(16, 5), torch.randint(0, 5, (16,))
    total, parts = compose_loss({"ce": 1.0}, label_smoothing=0.2)(_ctx(logits, y))
    assert torch.allclose(total, F.cross_entropy(logits, y, label_smoothing=0.2))
    assert not torch.allclose(total, F.cross_entropy(logits, y))
    assert set(parts) == {"ce"}

    data = make_data(n=64)
    recipe = Recipe(batch_size=64, label_smoothing=0.3)  # full batch: the first step sees all data
    model = linear_net()
    expected = F.cross_entropy(model(data.x_train), data.y_train, label_smoothing=0.3).item()
    assert first_step_loss(model, data, recipe) == pytest.approx(expected, rel=1e-5)


def test_loss_weights_and_extra_terms():
    torch.manual_seed(0)
    logits, y = torch.randn(8, 4), torch.randint(0, 4, (8,))
    ce = F.cross_entropy(logits, y)
    half, _ = compose_loss({"ce": 0.5})(_ctx(logits, y))
    assert torch.allclose(half, 0.5 * ce)
    l2 = lambda ctx: (ctx.logits ** 2).mean()  # noqa: E731
    total, parts = compose_loss({"ce": 1.0, "l2": 0.1}, {"l2": l2})(_ctx(logits, y))
    assert torch.allclose(total, ce + 0.1 * (logits ** 2).mean())
    assert set(parts) == {"ce", "l2"}

    data = make_data(n=64)
    recipe = Recipe(batch_size=64)
    full = first_step_loss(linear_net(), data, recipe)
    assert first_step_loss(linear_net(), data, recipe, loss={"ce": 0.5}) == pytest.approx(full / 2, rel=1e-6)


def test_unknown_term_is_a_user_error_listing_terms():
    assert "ce" in list_terms()
    with pytest.raises(UserError) as info:
        compose_loss({"ce": 1.0, "nope": 0.5}, {"l2": lambda ctx: ctx.logits.sum()})
    assert str(info.value) == f"loss: unknown term 'nope'; available terms: {', '.join(sorted({*list_terms(), 'l2'}))}"
    with pytest.raises(UserError, match="unknown term 'nope'; available terms: "):
        fit(linear_net(), make_data(n=8), Recipe(epochs=1), loss={"nope": 1.0})


# -- the loop -----------------------------------------------------------------------------------


def test_nan_loss_raises_and_leaves_previous_step():
    data = make_data(n=128)
    recipe = Recipe(epochs=2, batch_size=32)

    def bad(ctx: StepContext) -> torch.Tensor:
        scale = float("nan") if ctx.global_step == 3 else 0.0
        return ctx.logits.sum() * scale

    init = conv_net()
    model = copy.deepcopy(init)
    with pytest.raises(UserError) as info:
        fit(model, data, recipe, loss={"ce": 1.0, "bad": 1.0}, terms={"bad": bad})
    msg = str(info.value)
    assert msg == ("loss became nan at epoch 1, step 3 (global step 3); "
                   "lower the learning rate or check the data")
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    reference = copy.deepcopy(init)
    fit(reference, data, recipe, max_steps=2)  # same schedule, stops after two steps
    assert states_equal(model, reference)  # parameters and BN buffers as after step 2


def test_after_step_called_once_per_step_and_max_steps():
    data = make_data(n=100)
    calls = []
    result = fit(linear_net(), data, Recipe(epochs=3, batch_size=32), after_step=lambda m: calls.append(1))
    assert len(calls) == result.steps == 3 * 4
    calls.clear()
    result = fit(linear_net(), data, Recipe(epochs=3, batch_size=32), after_step=lambda m: calls.append(1),
                 max_steps=6)
    assert len(calls) == result.steps == 6
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert fit(linear_net(), data, Recipe(epochs=0)).steps == 0


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("dim", [1, 2])
def test_fast_precision_trains_and_keeps_fp32(dim, bf16, monkeypatch):
    # bf16 autocast is only used on CPUs with native bf16; force both paths here
    monkeypatch.setattr(importlib.import_module("compresslab.train.fit"), "native_bf16", lambda: bf16)
    shape = (2, 8, 8) if dim == 2 else (2, 32)
    data = make_data(n=96, shape=shape)
    model = conv_net(dim=dim)
    seen = {}
    model[0].register_forward_hook(lambda m, i, o: seen.update(conv=o.dtype, channels_last=o.is_contiguous(
        memory_format=torch.channels_last) and not o.is_contiguous()))

    def probe(ctx: StepContext) -> torch.Tensor:
        seen["logits"] = ctx.logits.dtype
        return ctx.logits.sum() * 0

    result = fit(model, data, Recipe(epochs=3, batch_size=32, lr=0.1, precision="fast", augment="crop"),
                 loss={"ce": 1.0, "probe": 1.0}, terms={"probe": probe})
    assert seen["conv"] == (torch.bfloat16 if bf16 else torch.float32)
    assert seen["channels_last"] == (dim == 2)
    assert seen["logits"] == torch.float32
    assert all(math.isfinite(h["loss"]) for h in result.history)
    for t in model.state_dict().values():
        assert t.is_contiguous()
        if t.is_floating_point():
            assert t.dtype == torch.float32 and torch.isfinite(t).all()
    assert evaluate_logits(model, data.x_train).dtype == torch.float32


def test_callback_events():
    data = make_data(n=70)
    events = []
    result = fit(linear_net(), data, Recipe(epochs=2, batch_size=32), callback=events.append)
    kinds = [e["event"] for e in events]
    assert kinds == ["start"] + (["step"] * 3 + ["epoch"]) * 2
    assert events[0] == {"event": "start", "epochs": 2, "steps_per_epoch": 3, "total_steps": 6}
    steps = [e for e in events if e["event"] == "step"]
    assert [(e["epoch"], e["step"]) for e in steps] == [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3)]
    for e in steps:
        assert {"loss", "acc", "samples_per_s"} <= e.keys() and 0 <= e["acc"] <= 1
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [{k: v for k, v in e.items() if k != "event"} for e in epochs] == result.history
    assert set(result.history[0]) == {"epoch", "loss", "acc", "seconds", "samples_per_s"}
    # the epoch loss is the example-weighted mean of the step losses
    ep1 = steps[:3]
    assert epochs[0]["loss"] == pytest.approx((ep1[0]["loss"] * 32 + ep1[1]["loss"] * 32 + ep1[2]["loss"] * 6) / 70)
    assert epochs[0]["acc"] == pytest.approx(ep1[-1]["acc"])


def test_learns_a_linearly_separable_problem():
    data = make_data(n=512, shape=(1, 4, 4), classes=2)
    model = linear_net(shape=(1, 4, 4), classes=2)
    result = fit(model, data, Recipe(epochs=15, batch_size=64, lr=0.1))
    assert accuracy(model, data.x_train, data.y_train) > 0.95
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_evaluate_logits_restores_mode():
    data = make_data(n=50)
    model = conv_net()
    model.train()
    logits = evaluate_logits(model, data.x_train, batch_size=16)
    assert model.training and logits.shape == (50, 3) and logits.dtype == torch.float32
    assert not logits.requires_grad and not logits.is_inference()
    model.eval()
    with torch.no_grad():
        assert torch.allclose(logits, model(data.x_train), atol=1e-6)
    assert not model.training
    assert math.isnan(accuracy(model, data.x_val, data.y_val))


def test_feature_points_are_captured():
    models = pytest.importorskip("compresslab.models")
    if not hasattr(models, "capture_features"):
        pytest.skip("compresslab.models.capture_features not available")
    seen = {}

    def hint(ctx: StepContext) -> torch.Tensor:
        seen["shape"] = tuple(ctx.features["1"].shape)
        return ctx.features["1"].float().pow(2).mean()

    hint.feature_points = ["1"]  # the BatchNorm's output, by module path
    fit(conv_net(), make_data(n=32), Recipe(epochs=1, batch_size=32), loss={"ce": 1.0, "hint": 0.1},
        terms={"hint": hint})
    assert seen["shape"] == (32, 8, 8, 8)


# -- progress reporter --------------------------------------------------------------------------


def test_rich_progress(capsys):
    import io

    from rich.console import Console

    from compresslab.progress import RichProgress

    data = make_data(n=64)
    with RichProgress(quiet=True) as quiet:  # no output at all, still a valid callback
        with quiet.task("train parent"):
            fit(linear_net(), data, Recipe(epochs=1, batch_size=32), callback=quiet)
    with RichProgress() as piped:  # stderr is captured here: not a terminal
        fit(linear_net(), data, Recipe(epochs=1, batch_size=32), callback=piped)
    assert capsys.readouterr() == ("", "")

    buf = io.StringIO()
    with RichProgress(console=Console(file=buf, force_terminal=True, width=150)) as progress:
        with progress.task("train parent"):
            fit(linear_net(), data, Recipe(epochs=2, batch_size=32), callback=progress)
        with progress.task("evaluate"):
            pass
    out = buf.getvalue()
    assert "train parent" in out and "epoch 2/2" in out and "samples/s" in out and "evaluate" in out
