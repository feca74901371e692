"""The loss-term registry: user terms for fit and distill, unknown names, double registration."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import compresslab.compress  # noqa: F401  (registers kd, at and hint)
from compresslab.compress.distill import TeacherSignal, distill, validate_distill
from compresslab.data import Dataset
from compresslab.errors import UserError
from compresslab.models import create_model
from compresslab.train import (
    Recipe,
    compose_loss,
    evaluate_logits,
    fit,
    get_term_factory,
    list_terms,
    losses,
    register_term,
    require_teacher,
)


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """Terms a test registers are gone after it."""
    monkeypatch.setattr(losses, "_TERMS", dict(losses._TERMS))


def _data(n=64, length=40, k=4, seed=0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, k, (n,), generator=g)
    x = torch.randn(n, 1, length, generator=g) + y.view(-1, 1, 1).float()
    return Dataset("toy", x, y, x[:16], y[:16], x[:16], y[:16], num_classes=k)


def _cnn(width, seed=0):
    torch.manual_seed(seed)
    return create_model("cnn1d", num_classes=4, in_channels=1, input_shape=(1, 40), width=width, hidden=16)


def _states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _logit_l2(ctx):
    return ctx.logits.pow(2).mean()


def test_user_term_trains_exactly_like_the_same_term_by_hand():
    seen = []

    @register_term("logit_l2")
    def factory(signal, **cfg):
        seen.append((signal, cfg))
        return _logit_l2

    assert "logit_l2" in list_terms() and get_term_factory("logit_l2") is factory
    data = _data()
    # one full batch, plain SGD at a constant lr: the first step is w -= lr · ∇(ce + 0.5·mean(logits²))
    recipe = Recipe(epochs=1, batch_size=64, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant",
                    label_smoothing=0.1)
    init = _cnn(8)
    model, ready, manual = copy.deepcopy(init), copy.deepcopy(init), copy.deepcopy(init)
    events = []
    fit(model, data, recipe, loss={"ce": 1.0, "logit_l2": 0.5}, max_steps=1, callback=events.append)
    assert seen == [(None, {"label_smoothing": 0.1})]

    # the same callable handed to fit ready-made: bit-identical training
    fit(ready, data, recipe, loss={"ce": 1.0, "l2": 0.5}, terms={"l2": _logit_l2}, max_steps=1)
    assert _states_equal(model, ready)

    # and by hand
    manual.train()
    logits = manual(data.x_train)
    loss = F.cross_entropy(logits, data.y_train, label_smoothing=0.1) + 0.5 * logits.pow(2).mean()
    loss.backward()
    with torch.no_grad():
        for p in manual.parameters():
            p -= 0.1 * p.grad
    step = next(e for e in events if e["event"] == "step")
    assert step["loss"] == pytest.approx(loss.item(), rel=1e-5)
    for (name, a), b in zip(model.state_dict().items(), manual.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    without = copy.deepcopy(init)
    fit(without, data, recipe, max_steps=1)
    assert not _states_equal(model, without)  # the term did change training


def test_fit_takes_a_ready_loss():
    data, recipe = _data(), Recipe(epochs=1, batch_size=32)
    a, b = _cnn(8), _cnn(8)
    fit(a, data, recipe, loss={"ce": 1.0})
    fit(b, data, recipe, loss=compose_loss({"ce": 1.0}))
    assert _states_equal(a, b)


@pytest.mark.parametrize("cache", [True, False])
def test_user_term_reads_the_teacher_through_distill(cache):
    built = []

    @register_term("logit_mse")
    def factory(signal, *, student=None, seed=None, **_):
        signal = require_teacher(signal, "logit_mse")
        signal.want_logits()
        built.append((signal, student, seed))
        return lambda ctx: F.mse_loss(ctx.logits, signal.logits(ctx))

    data, recipe = _data(), Recipe(epochs=2, batch_size=32, lr=0.05)
    teacher, student, reference = _cnn(32, seed=5), _cnn(8, seed=1), _cnn(8, seed=1)
    distill(teacher, student, data, recipe, loss={"ce": 0.5, "logit_mse": 1.0}, cache_teacher=cache, seed=3)
    ((signal, seen_student, seed),) = built
    assert isinstance(signal, TeacherSignal) and signal.teacher is teacher
    assert seen_student is student and seed == 3
    assert (signal.cached_logits is not None) == cache

    # the same training by hand: teacher logits precomputed (cache) or from a live eval forward
    teacher.eval()
    fixed = evaluate_logits(teacher, data.x_train)

    def by_hand(ctx):
        if cache:
            return F.mse_loss(ctx.logits, fixed[ctx.idx])
        with torch.no_grad():
            target = teacher(ctx.x).float()
        return F.mse_loss(ctx.logits, target)

    fit(reference, data, recipe, loss={"ce": 0.5, "mine": 1.0}, terms={"mine": by_hand}, seed=3)
    assert _states_equal(student, reference)


def test_unknown_term_lists_the_registered_ones():
    register_term("mine", lambda signal, **_: _logit_l2)
    message = "loss: unknown term 'nope'; available terms: at, ce, hint, kd, matryoshka, mine, mse, soft-tree, triplet"
    for call in (lambda: get_term_factory("nope"), lambda: compose_loss({"ce": 1.0, "nope": 1.0}),
                 lambda: fit(_cnn(8), _data(), Recipe(epochs=1), loss={"nope": 1.0}),
                 lambda: validate_distill(_cnn(16), _cnn(8), _data(), loss={"kd": 1.0, "nope": 1.0}),
                 lambda: distill(_cnn(16), _cnn(8), _data(), Recipe(epochs=1), loss={"nope": 1.0})):
        with pytest.raises(UserError) as info:
            call()
        assert str(info.value) == message


def test_registering_a_name_twice_raises_unless_overridden():
    def first(signal, **_):
        return _logit_l2

    def second(signal, **_):
        return lambda ctx: ctx.logits.abs().mean()

    assert register_term("twice", first) is first
    with pytest.raises(ValueError, match="'twice' is already registered"):
        register_term("twice", second)
    with pytest.raises(ValueError, match="already registered"):
        register_term("ce")(second)
    assert get_term_factory("twice") is first
    assert register_term("twice", override=True)(second) is second
    assert get_term_factory("twice") is second


def test_a_teacher_term_without_a_teacher_is_a_user_error():
    @register_term("needs_teacher")
    def factory(signal, **_):
        signal = require_teacher(signal, "needs_teacher")
        return lambda ctx: F.mse_loss(ctx.logits, signal.logits(ctx))

    data = _data()
    for name in ("needs_teacher", "kd", "at", "hint"):
        model = _cnn(8)
        before = copy.deepcopy(model)
        with pytest.raises(UserError) as info:
            fit(model, data, Recipe(epochs=1), loss={"ce": 1.0, name: 1.0})
        assert str(info.value) == f"loss: the {name!r} term needs a teacher; train with distill"
        assert _states_equal(model, before)


def test_term_order_follows_the_loss_dict():
    register_term("mine", lambda signal, **_: _logit_l2)
    loss = compose_loss({"mine": 0.1, "kd": 0.5, "ce": 1.0, "at": 10}, signal=TeacherSignal(_cnn(16)),
                        student=_cnn(8), sample=_data().x_train[:2])
    assert list(loss.weights) == ["mine", "kd", "ce", "at"]
    assert loss.weights == {"mine": 0.1, "kd": 0.5, "ce": 1.0, "at": 10.0}
