"""fit's streaming path (training data kept in host memory) and ``recipe.compile``."""
from __future__ import annotations

import importlib
import math

import pytest
import torch
from torch import nn

from compresslab.data.core import Dataset, stream_batches
from compresslab.errors import UserError
from compresslab.train import Recipe, fit
from compresslab.train.fit import auto_stream, device_free_bytes, should_stream

fit_module = importlib.import_module("compresslab.train.fit")  # the package's ``fit`` is the function

#: Recipe.model_dump()'s keys before ``compile`` existed: step hashes are made from them.
OLD_KEYS = ["optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule", "milestones", "gamma",
            "warmup_epochs", "epochs", "batch_size", "label_smoothing", "augment", "crop_padding", "precision"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_data(n: int = 150, shape: tuple[int, ...] = (2, 8, 8), classes: int = 3, device="cpu") -> Dataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, *shape, generator=g)
    y = (x.flatten(1) @ torch.randn(math.prod(shape), classes, generator=g)).argmax(1)
    x, y = x.to(device), y.to(device)
    return Dataset("synthetic", x, y, x[:0], y[:0], x[:0], y[:0], num_classes=classes)


def conv_net(dim: int = 2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    conv, bn = (nn.Conv2d, nn.BatchNorm2d) if dim == 2 else (nn.Conv1d, nn.BatchNorm1d)
    pool = nn.AdaptiveAvgPool2d(1) if dim == 2 else nn.AdaptiveAvgPool1d(1)
    return nn.Sequential(conv(2, 8, 3, padding=1), bn(8), nn.ReLU(), pool, nn.Flatten(), nn.Linear(8, 3))


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def curve(result) -> list[tuple[float, float]]:
    return [(h["loss"], h["acc"]) for h in result.history]


# -- streaming ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("augment, dim, shard", [("none", 2, None), ("crop-flip", 2, None), ("crop", 1, None),
                                                 ("crop-flip", 2, (1, 2))])
def test_streamed_and_resident_training_are_bit_identical_on_cpu(augment, dim, shard):
    data = make_data(shape=(2, 8, 8) if dim == 2 else (2, 12))
    recipe = Recipe(epochs=2, batch_size=32, lr=0.1, augment=augment, crop_padding=2)
    resident, streamed = conv_net(dim), conv_net(dim)
    a = fit(resident, data, recipe, seed=3, shard=shard, stream=False)
    b = fit(streamed, data, recipe, seed=3, shard=shard, stream=True)
    assert same_weights(resident, streamed)
    assert curve(a) == curve(b) and a.steps == b.steps == 10


def test_stream_batches_match_batches_on_cpu():
    from compresslab.data.core import batches

    data = make_data(n=70)
    x, y = data.x_train, data.y_train
    got = list(stream_batches(x, y, 32, "cpu", generator=torch.Generator().manual_seed(5)))
    want = list(batches(x, y, 32, shuffle=True, generator=torch.Generator().manual_seed(5)))
    assert [b[0].shape[0] for b in got] == [32, 32, 6]
    assert all(torch.equal(g, w) for gb, wb in zip(got, want) for g, w in zip(gb, wb))
    with pytest.raises(ValueError, match="host memory"):
        next(stream_batches(x.to("meta"), y, 32, "cpu"))


def test_the_automatic_decision_streams_what_exceeds_the_budget(monkeypatch):
    assert should_stream(600, 1000) and not should_stream(500, 1000)
    assert not should_stream(10**15, None)  # free memory unknown: resident
    assert device_free_bytes(torch.device("cpu")) is None
    monkeypatch.setattr(fit_module, "STREAM_FRACTION", 0.9)
    assert not should_stream(600, 1000)

    x, y = torch.zeros(100, 2, 10), torch.zeros(100, dtype=torch.long)  # 8,000 + 800 bytes
    cuda = torch.device("cuda", 0)
    monkeypatch.setattr(fit_module, "device_free_bytes", lambda device: 9_000)
    assert auto_stream(x, y, cuda)  # 8,800 bytes > 0.9 x 9,000
    monkeypatch.setattr(fit_module, "device_free_bytes", lambda device: 10_000)
    assert not auto_stream(x, y, cuda)
    monkeypatch.setattr(fit_module, "device_free_bytes", lambda device: 1)
    assert not auto_stream(x, y, torch.device("cpu"))  # already there: never streams


@pytest.mark.parametrize("decision, streams", [(True, True), (False, False)])
def test_fit_follows_the_automatic_decision_unless_told(monkeypatch, decision, streams):
    calls = []
    real = fit_module.stream_batches
    monkeypatch.setattr(fit_module, "stream_batches", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(fit_module, "auto_stream", lambda x, y, device: decision)
    recipe = Recipe(epochs=1, batch_size=64)
    fit(conv_net(), make_data(), recipe)
    assert bool(calls) == streams
    calls.clear()
    fit(conv_net(), make_data(), recipe, stream=not decision)  # an explicit stream= wins
    assert bool(calls) == (not streams)


@pytest.mark.cuda
def test_streaming_on_cuda_trains_from_host_memory(monkeypatch):
    data = make_data(n=600)
    monkeypatch.setattr(fit_module, "STREAM_FRACTION", 1e-12)  # any split exceeds the budget
    assert auto_stream(data.x_train, data.y_train, torch.device("cuda", 0))
    calls = []
    real = fit_module.stream_batches
    monkeypatch.setattr(fit_module, "stream_batches", lambda *a, **k: calls.append(1) or real(*a, **k))
    # Without augmentation the streamed order comes from the CPU generator, as on the CPU, so
    # the CUDA run must match a CPU one up to float rounding: a copy racing the step would not.
    recipe = Recipe(epochs=2, batch_size=64, lr=0.1)
    on_cuda, on_cpu = conv_net().cuda(), conv_net()
    a = fit(on_cuda, data, recipe, seed=1, check_every=3)
    b = fit(on_cpu, data, recipe, seed=1)
    assert calls and data.x_train.device.type == "cpu"
    for pa, pb in zip(on_cuda.cpu().state_dict().values(), on_cpu.state_dict().values()):
        torch.testing.assert_close(pa, pb, rtol=1e-3, atol=1e-4)
    assert [h["acc"] for h in a.history] == pytest.approx([h["acc"] for h in b.history], abs=0.01)
    augmented = fit(conv_net().cuda(), data, recipe.model_copy(update={"augment": "crop-flip", "crop_padding": 2}),
                    seed=1)
    assert len(augmented.history) == 2 and all(math.isfinite(h["loss"]) for h in augmented.history)


# -- compile ------------------------------------------------------------------------------------------


def test_compile_is_left_out_of_old_dumps_and_round_trips():
    assert list(Recipe().model_dump()) == OLD_KEYS
    assert list(Recipe(epochs=3, compile=False).model_dump()) == OLD_KEYS
    assert "compile" not in Recipe().model_dump_json()
    on = Recipe(compile=True)
    assert on.model_dump()["compile"] is True and list(on.model_dump()) == [*OLD_KEYS, "compile"]
    assert Recipe.model_validate(on.model_dump()) == on
    assert Recipe.from_dict(Recipe().model_dump()) == Recipe()


def test_compiled_training_matches_eager_and_keeps_feature_hooks():
    pytest.importorskip("compresslab.models")
    seen = []

    def hint(ctx) -> torch.Tensor:
        seen.append(ctx.features["2"].shape)
        return ctx.features["2"].float().pow(2).mean()

    hint.feature_points = ["2"]  # the ReLU's output, by module path
    data = make_data(n=64, shape=(2, 6))
    recipe = Recipe(epochs=2, batch_size=32, lr=0.05)
    eager, compiled = conv_net(dim=1), conv_net(dim=1)
    a = fit(eager, data, recipe, loss={"ce": 1.0, "hint": 0.1}, terms={"hint": hint})
    b = fit(compiled, data, recipe.model_copy(update={"compile": True}), loss={"ce": 1.0, "hint": 0.1},
            terms={"hint": hint})
    assert len(seen) == 8  # the hook fired on every step of both runs
    assert b.steps == a.steps == 4 and not isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule)
    for (la, _), (lb, _) in zip(curve(a), curve(b)):
        assert lb == pytest.approx(la, rel=1e-4)
    for pa, pb in zip(eager.state_dict().values(), compiled.state_dict().values()):  # BN statistics too
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5)


def test_compile_where_it_cannot_work_is_a_one_line_error(monkeypatch):
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", ("no-such-c++-compiler",))
    monkeypatch.setattr(inductor, "fx_graph_cache", False)
    torch._dynamo.reset()
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 3))  # a graph no other test compiled
    data = make_data(n=16, shape=(5, 2))
    with pytest.raises(UserError) as err:
        fit(model, data, Recipe(epochs=1, batch_size=16, compile=True))
    msg = str(err.value)
    assert msg.startswith("recipe: compile: torch.compile does not work here (") and "\n" not in msg
    assert msg.endswith("use compile: false")


def test_compile_unavailable_at_all_is_a_one_line_error(monkeypatch):
    def unsupported(model):
        raise RuntimeError("torch.compile is not supported on this platform\nmore detail")

    monkeypatch.setattr(torch, "compile", unsupported)
    with pytest.raises(UserError, match=r"not supported on this platform\); use compile: false$"):
        fit(conv_net(), make_data(n=16), Recipe(epochs=1, batch_size=16, compile=True))
