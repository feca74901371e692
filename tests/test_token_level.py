"""Token-level tasks (NER-style): logits (N, L, K), labels (N, L) with -100 where nothing is
scored. Every output metric and every loss must equal the same computation on the valid
tokens flattened by hand, and nothing at an ignored position may change any of them."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import DEVICES
from scipy.spatial.distance import jensenshannon
from sklearn.metrics import cohen_kappa_score
from torch import nn

from compresslab.compress.distill import _distill_loss, distill, kd_loss, noise_logits
from compresslab.data.core import IGNORE_INDEX, Dataset
from compresslab.errors import UserError
from compresslab.measure import function as fn
from compresslab.measure.cka import cache_features, cka_against_cached, cka_between, linear_cka
from compresslab.measure.inheritance import split_by_correctness
from compresslab.models import capture_features, register_model
from compresslab.scratch import Scratch
from compresslab.train import Recipe, evaluate_logits, fit
from compresslab.train.fit import accuracy
from compresslab.train.losses import CrossEntropy, StepContext

N, L, V, K = 40, 10, 30, 4
MODEL = "test-token-tagger"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one intra-op thread is fastest, and fair to a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Tagger(nn.Module):
    """A per-token classifier: embedding, one per-token hidden layer (``mix``), a head. No
    mixing across positions, so a token's output depends on its own id only."""

    def __init__(self, num_classes: int, vocab_size: int = V, width: int = 16):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=0)
        self.mix = nn.Linear(width, width)
        self.head = nn.Linear(width, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.mix(self.embed(ids))))


@register_model(MODEL)
def _tagger(num_classes, in_channels, vocab_size: int = V, width: int = 16):
    return Tagger(num_classes, vocab_size, width)


def _tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids int64 (n, L) padded with 0 at the tail; labels (n, L) = a function of the id, with
    -100 at the padding and at ~20% of the real tokens (sub-tokens after a word's first)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, L + 1, (n,), generator=g)
    ids = torch.randint(1, V, (n, L), generator=g)
    pad = torch.arange(L)[None, :] >= lengths[:, None]
    ids[pad] = 0
    labels = ids % K
    labels[pad | (torch.rand(n, L, generator=g) < 0.2)] = IGNORE_INDEX
    return ids, labels


def _data() -> Dataset:
    splits = [_tokens(n, s) for n, s in ((N, 0), (16, 1), (16, 2))]
    return Dataset("test-tokens", *splits[0], *splits[1], *splits[2], num_classes=K,
                   meta={"text": {"level": "token", "pad_id": 0, "vocab_size": V, "tokenizer": "word",
                                  "labels": ["O", "B", "I", "E"], "max_len": L}})


def _model(seed: int, width: int = 16) -> Tagger:
    torch.manual_seed(seed)
    return Tagger(K, V, width)


def _logit_pair(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    _, labels = _tokens(N, seed)
    a = torch.randn(N, L, K, generator=g) * 2
    b = a + torch.randn(N, L, K, generator=g)
    return a, b, labels


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _by_hand(a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Every metric of compare_logits on the valid tokens flattened by hand (numpy, sklearn, scipy)."""
    keep = (labels != IGNORE_INDEX).numpy()
    fa, fb, y = a.double().numpy()[keep], b.double().numpy()[keep], labels.numpy()[keep]
    pa, pb = _softmax(fa), _softmax(fb)
    la, lb = fa.argmax(1), fb.argmax(1)
    kl = lambda p, q: float((p * (np.log(p) - np.log(q))).sum(1).mean())  # noqa: E731
    return {"agreement": float((la == lb).mean()), "disagreement": float((la != lb).mean()),
            "kappa": cohen_kappa_score(la, lb),
            "js_divergence": float((jensenshannon(pa, pb, axis=1) ** 2).mean()),
            "activation_distance": float(np.linalg.norm(pa - pb, axis=1).mean()),
            "output_cosine": float(((pa * pb).sum(1) / (np.linalg.norm(pa, axis=1) * np.linalg.norm(pb, axis=1))).mean()),
            "kl_ab": kl(pa, pb), "kl_ba": kl(pb, pa),
            "accuracy_a": float((la == y).mean()), "accuracy_b": float((lb == y).mean())}


# --------------------------------------------------------------------------- output metrics


def test_every_metric_equals_the_hand_flattened_valid_tokens():
    a, b, labels = _logit_pair()
    assert 0 < int((labels == IGNORE_INDEX).sum()) < labels.numel()
    want = _by_hand(a, b, labels)
    got = fn.compare_logits(a, b, labels)
    assert got.keys() == want.keys()
    assert got == pytest.approx(want, rel=1e-9, abs=1e-12)
    # the single functions, from numpy too
    singles = {"agreement": fn.agreement, "disagreement": fn.disagreement, "kappa": fn.cohen_kappa,
               "js_divergence": fn.js_divergence, "activation_distance": fn.activation_distance,
               "output_cosine": fn.output_cosine, "kl_ab": fn.kl_divergence}
    for key, f in singles.items():
        assert f(a.numpy(), b.numpy(), labels=labels.numpy()) == pytest.approx(want[key], rel=1e-9, abs=1e-12), key
    assert fn.accuracy(a, labels) == pytest.approx(want["accuracy_a"], rel=1e-12)
    assert fn.compare(a, b, labels) == got


def test_attention_mask_alone_selects_the_tokens_without_labels():
    a, b, labels = _logit_pair(1)
    mask = labels != IGNORE_INDEX
    got = fn.compare_logits(a, b, mask=mask.int())
    want = fn.compare_logits(a[mask], b[mask])
    assert got == pytest.approx(want, rel=1e-12, abs=1e-15)
    # labels and a mask together: both must allow a position
    both = fn.compare_logits(a, b, labels, mask=torch.ones(N, L).index_fill_(1, torch.tensor([0]), 0))
    keep = mask.clone()
    keep[:, 0] = False
    assert both["agreement"] == pytest.approx(_by_hand(a, b, torch.where(keep, labels, IGNORE_INDEX))["agreement"])


def test_ignored_positions_change_no_metric():
    a, b, labels = _logit_pair(2)
    ignored = labels == IGNORE_INDEX
    a2, b2 = a.clone(), b.clone()
    a2[ignored] = torch.randn(int(ignored.sum()), K) * 100
    b2[ignored] = -a2[ignored]
    assert fn.compare_logits(a2, b2, labels) == fn.compare_logits(a, b, labels)
    assert split_by_correctness(a2, b2, labels) == split_by_correctness(a, b, labels)


def test_split_by_correctness_counts_valid_tokens():
    a, b, labels = _logit_pair(3)
    keep = labels != IGNORE_INDEX
    got = split_by_correctness(a, b, labels)
    want = split_by_correctness(a[keep], b[keep], labels[keep])
    assert got == want and got["n_right"] + got["n_wrong"] == int(keep.sum())


def test_token_metrics_reject_bad_shapes_and_all_ignored():
    a, b, labels = _logit_pair()
    with pytest.raises(UserError, match=r"labels must have shape \(40, 10\)"):
        fn.compare_logits(a, b, labels[:, :5])
    with pytest.raises(UserError, match="no valid tokens"):
        fn.compare_logits(a, b, torch.full_like(labels, IGNORE_INDEX))


# --------------------------------------------------------------------------- losses


def test_ce_term_is_cross_entropy_over_the_valid_tokens():
    a, _, labels = _logit_pair(4)
    keep = labels != IGNORE_INDEX
    ctx = StepContext(None, torch.zeros(N, L, dtype=torch.long), labels, torch.arange(N), a)
    got = CrossEntropy(label_smoothing=0.1)(ctx)
    assert float(got) == pytest.approx(float(F.cross_entropy(a[keep], labels[keep], label_smoothing=0.1)), rel=1e-6)
    a2 = a.clone()
    a2[~keep] = 1e4
    assert float(CrossEntropy(0.1)(StepContext(None, ctx.x, labels, ctx.idx, a2))) == float(got)
    # a batch whose tokens are all ignored adds nothing (and no nan)
    none = StepContext(None, ctx.x, torch.full_like(labels, IGNORE_INDEX), ctx.idx, a.requires_grad_())
    assert float(CrossEntropy()(none).detach()) == 0.0


def test_kd_loss_is_the_mean_over_valid_tokens():
    s, t, labels = _logit_pair(5)
    keep = (labels != IGNORE_INDEX).numpy()
    T = 3.0
    ps, pt = _softmax(s.double().numpy()[keep] / T), _softmax(t.double().numpy()[keep] / T)
    want = T * T * float((pt * (np.log(pt) - np.log(ps))).sum(1).mean())
    assert float(kd_loss(s, t, T, labels=labels)) == pytest.approx(want, rel=1e-5)
    t2 = t.clone()
    t2[labels == IGNORE_INDEX] = 50.0
    assert float(kd_loss(s, t2, T, labels=labels)) == float(kd_loss(s, t, T, labels=labels))


def _features(model: nn.Module, x: torch.Tensor, point: str = "mix") -> tuple[torch.Tensor, torch.Tensor]:
    with capture_features(model, [point]) as feats:
        logits = model(x)
    return logits, feats[point]


def test_at_and_hint_terms_over_valid_tokens():
    data = _data()
    student, teacher = _model(0, 16), _model(1, 24)  # widths differ: hint regresses 16 -> 24
    signal, loss = _distill_loss(teacher, student, data, {"at": 1.0, "hint": 1.0},
                                 at_points={"mix": "mix"}, hint_points={"mix": "mix"})
    with Scratch() as scratch:
        signal.prepare(data.x_train, scratch, cache=True)

        def terms(x):
            with capture_features(student, ["mix"]) as feats:
                logits = student(x)
            ctx = StepContext(student, x, data.y_train, torch.arange(N), logits.float(), feats)
            return {name: float(term(ctx).detach()) for name, (_, term) in loss.terms.items()}

        got = terms(data.x_train)
        keep = data.y_train != IGNORE_INDEX
        with torch.no_grad():
            fs, ft = _features(student, data.x_train)[1], _features(teacher, data.x_train)[1]
            at_s = F.normalize(fs.pow(2).mean(-1) * keep, dim=1)
            at_t = F.normalize(ft.pow(2).mean(-1) * keep, dim=1)
            want_at = float((at_s - at_t)[keep].pow(2).mean())
            reg = loss.terms["hint"][1].regressors[0]
            want_hint = float(F.mse_loss(reg(fs)[keep], ft[keep]))
        assert isinstance(reg, nn.Linear) and reg.weight.shape == (24, 16)
        assert got["at"] == pytest.approx(want_at, rel=1e-5) and got["at"] > 0
        assert got["hint"] == pytest.approx(want_hint, rel=1e-5)
        # other ids at the ignored positions (the tagger is per token): neither term moves
        x2 = data.x_train.clone()
        x2[~keep] = (x2[~keep] + 7) % V
        assert terms(x2) == pytest.approx(got, rel=1e-6)


def test_at_rejects_non_token_feature_shapes():
    class Pooled(Tagger):
        def forward(self, ids):
            return self.head(torch.tanh(self.mix(self.embed(ids).mean(1))))[:, None].expand(-1, ids.shape[1], -1)

    data = _data()
    torch.manual_seed(0)
    with pytest.raises(UserError):
        _distill_loss(Pooled(K), Pooled(K), data, {"at": 1.0}, at_points={"mix": "mix"})


# --------------------------------------------------------------------------- fit, evaluate, distill


def test_evaluate_logits_takes_token_ids():
    data, model = _data(), _model(0)
    logits = evaluate_logits(model, data.x_test, batch_size=7)
    assert logits.shape == (16, L, K) and logits.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(logits, model(data.x_test))
    keep = data.y_test != IGNORE_INDEX
    assert accuracy(model, data.x_test, data.y_test) == pytest.approx(
        float((logits.argmax(-1) == data.y_test)[keep].float().mean()))


def test_fit_trains_and_scores_valid_tokens_only():
    data = _data()
    model = _model(0)
    init = copy.deepcopy(model)
    one = fit(copy.deepcopy(init), data, Recipe(epochs=1, batch_size=N, optimizer="adam", lr=0.05),
              max_steps=1).history[0]
    keep = data.y_train != IGNORE_INDEX
    with torch.no_grad():
        logits = init(data.x_train)  # the one batch is the whole (shuffled) split: order does not matter
    assert one["acc"] == pytest.approx(float((logits.argmax(-1) == data.y_train)[keep].sum()) / int(keep.sum()))
    assert one["loss"] == pytest.approx(float(F.cross_entropy(logits[keep], data.y_train[keep])), rel=1e-5)
    hist = fit(model, data, Recipe(epochs=25, batch_size=20, optimizer="adam", lr=0.1, weight_decay=0.0)).history
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]
    assert hist[-1]["acc"] > 0.9  # labels are a function of the id: learnable
    assert accuracy(model, data.x_val, data.y_val) > 0.8


@pytest.mark.parametrize("dev", DEVICES)
def test_token_accuracy_where_the_model_trains(dev):
    """On CUDA the loss and counts are read back in windows: the epoch's token accuracy is
    still the hand count (one full batch, scored before its optimizer step)."""
    data, init = _data(), _model(0)
    keep = data.y_train != IGNORE_INDEX
    with torch.no_grad():
        want = float((init(data.x_train).argmax(-1) == data.y_train)[keep].sum()) / int(keep.sum())
    events = []
    hist = fit(copy.deepcopy(init).to(dev), data, Recipe(epochs=2, batch_size=N), max_steps=1,
               callback=events.append).history
    assert hist[0]["acc"] == pytest.approx(want)
    assert [e["acc"] for e in events if e["event"] == "epoch"] == [hist[0]["acc"]]


def test_distill_kd_step_is_the_hand_flattened_kd_loss():
    data = _data()
    teacher = _model(7)
    T = 2.0
    keep = data.y_train != IGNORE_INDEX
    with torch.no_grad():
        want = float(kd_loss(_model(0)(data.x_train), teacher(data.x_train), T, labels=data.y_train))
        ps = F.log_softmax(_model(0)(data.x_train)[keep] / T, -1)
        pt = F.log_softmax(teacher(data.x_train)[keep] / T, -1)
        by_hand = T * T * float((pt.exp() * (pt - ps)).sum(1).mean())
    assert want == pytest.approx(by_hand, rel=1e-5)
    recipe = Recipe(epochs=1, batch_size=N, optimizer="adam", lr=0.01)
    for cache in (True, False):  # cached teacher logits (N, L, K) or the teacher live
        got = distill(teacher, _model(0), data, recipe, loss={"kd": 1.0}, temperature=T, cache_teacher=cache,
                      max_steps=1).history[0]["loss"]
        assert got == pytest.approx(want, rel=1e-5)


def test_noise_teacher_draws_one_vector_per_token():
    data = _data()
    fixed = noise_logits("gaussian-noise", N, K, seed=3, tokens=L)
    assert fixed.shape == (N, L, K)
    assert torch.equal(noise_logits("gaussian-noise", N, K, seed=3), torch.randn(N, K, generator=torch.Generator().manual_seed(3)))
    hist = distill(fixed, _model(0), data, Recipe(epochs=1, batch_size=N), loss={"kd": 1.0}, max_steps=1).history
    with torch.no_grad():
        want = float(kd_loss(_model(0)(data.x_train), fixed, 4.0, labels=data.y_train))
    assert hist[0]["loss"] == pytest.approx(want, rel=1e-5)
    with pytest.raises(UserError, match=r"\(40, 10, 4\)"):
        distill(torch.zeros(N, K), _model(0), data, Recipe(epochs=1), loss={"kd": 1.0})


# --------------------------------------------------------------------------- CKA


def test_cka_uses_one_row_per_valid_token():
    data = _data()
    a, b = _model(0), _model(1, 24)
    keep = data.y_train != IGNORE_INDEX
    with torch.no_grad():
        fa, fb = _features(a, data.x_train)[1], _features(b, data.x_train)[1]
    want = linear_cka(fa[keep], fb[keep], unbiased=True)
    got = cka_between(a, b, data.x_train, points=["mix"], mask=keep, batch_size=7)["mix"]
    assert got["n"] == int(keep.sum()) and got["dims"] == [16, 24]
    assert got["cka"] == pytest.approx(want, rel=1e-9)
    with Scratch() as scratch:
        cached = cache_features(a, data.x_train, ["mix"], scratch, mask=keep, batch_size=7)
        assert cached["mix"].shape == (int(keep.sum()), 16)
        again = cka_against_cached(cached, b, data.x_train, ["mix"], mask=keep, batch_size=7)["mix"]
    assert again["cka"] == pytest.approx(want, rel=1e-5)
    x2 = data.x_train.clone()  # other ids at the ignored positions: the same rows, the same CKA
    x2[~keep] = (x2[~keep] + 5) % V
    assert cka_between(a, b, x2, points=["mix"], mask=keep)["mix"]["cka"] == pytest.approx(want, rel=1e-9)
    # a feature that is not per token cannot give token rows
    pooled = nn.Sequential(nn.Embedding(V, 8), nn.Flatten(), nn.Linear(8 * L, K))
    with pytest.raises(UserError, match="not per token"):
        cka_between(pooled, pooled, data.x_train, points=["1"], mask=keep)


# --------------------------------------------------------------------------- the run store


@pytest.fixture
def token_store(monkeypatch, tmp_path):
    """The store's dataset lookup answering ``test-tokens`` with the toy token dataset."""
    from compresslab import api
    from compresslab.steps import common

    data = _data()
    real = common.dataset

    def dataset(name, val_fraction, seed):
        return data if name == "test-tokens" else real(name, val_fraction, seed)

    monkeypatch.setattr(common, "dataset", dataset)
    monkeypatch.setattr(api, "dataset", dataset)
    return data, tmp_path / "runs"


def test_store_train_caches_token_logits_and_compares_per_token(token_store):
    from compresslab import api

    data, runs = token_store
    over = {"epochs": 3, "batch_size": 20, "optimizer": "adam", "lr": 0.05}
    a = api.train_model(MODEL, "test-tokens", overrides=over, seed=0, runs=runs)
    b = api.train_model(MODEL, "test-tokens", options={"width": 8}, overrides=over, seed=1, runs=runs)
    logits_a = {s: np.load(f"{a['checkpoint']}/logits_{s}.npy") for s in ("val", "test")}
    assert logits_a["test"].shape == (16, L, K) and logits_a["val"].shape == (16, L, K)
    metrics = json.loads(open(f"{a['checkpoint']}/metrics.json").read())
    for split in ("val", "test"):
        y = data.split(split)[1].numpy()
        keep = y != IGNORE_INDEX
        assert metrics["accuracy"][split] == pytest.approx(float((logits_a[split].argmax(-1) == y)[keep].mean()))
    assert a["accuracy"] == metrics["accuracy"]
    logits_b = np.load(f"{b['checkpoint']}/logits_test.npy")
    got = api.compare_checkpoints(a["checkpoint"], b["checkpoint"], "test-tokens")
    assert got == pytest.approx(_by_hand(torch.from_numpy(logits_a["test"]), torch.from_numpy(logits_b),
                                         data.y_test), rel=1e-6, abs=1e-9)
    ev = api.evaluate_checkpoint(a["checkpoint"], "test-tokens")["splits"]["test"]
    assert ev["accuracy"] == pytest.approx(metrics["accuracy"]["test"])


def test_store_distill_reports_per_token_agreement(token_store):
    from compresslab import api

    data, runs = token_store
    over = {"epochs": 2, "batch_size": 20, "optimizer": "adam", "lr": 0.05}
    t = api.train_model(MODEL, "test-tokens", overrides=over, runs=runs)
    s = api.distill_checkpoint(t["checkpoint"], MODEL, "test-tokens", options={"width": 8}, overrides=over,
                               runs=runs)
    st = np.load(f"{s['checkpoint']}/logits_test.npy")
    te = np.load(f"{t['checkpoint']}/logits_test.npy")
    assert st.shape == (16, L, K)
    assert s["vs_teacher"] == pytest.approx(_by_hand(torch.from_numpy(te), torch.from_numpy(st), data.y_test),
                                            rel=1e-5, abs=1e-7)


def test_a_tiny_bert_distils_and_compares_per_token():
    """The same terms and CKA on a transformer's per-token layer outputs (the ``bert`` model
    of :mod:`compresslab.models.hf`, skipped where it or transformers is absent)."""
    pytest.importorskip("transformers")
    pytest.importorskip("compresslab.models.hf")
    from compresslab.models import create_model, feature_points

    data = _data()

    def bert(hidden, seed):
        torch.manual_seed(seed)
        return create_model("bert", num_classes=K, in_channels=L, input_shape=(L,), hidden=hidden, layers=2,
                            heads=2, vocab_size=V, pad_id=0, max_positions=32)

    teacher, student = bert(32, 0), bert(16, 1)
    points = list(feature_points(teacher))
    assert len(points) == 2
    hist = distill(teacher, student, data, Recipe(epochs=1, batch_size=20, optimizer="adam", lr=1e-3),
                   loss={"kd": 1.0, "ce": 0.1, "at": 1.0, "hint": 1.0}, max_steps=2).history
    assert np.isfinite(hist[0]["loss"]) and 0.0 <= hist[0]["acc"] <= 1.0
    keep = data.y_train != IGNORE_INDEX
    cka = cka_between(teacher, student, data.x_train, mask=keep)
    assert list(cka) == points and all(r["n"] == int(keep.sum()) and r["dims"] == [32, 16] for r in cka.values())
    la, lb = evaluate_logits(teacher, data.x_test), evaluate_logits(student, data.x_test)
    assert la.shape == (16, L, K)
    assert fn.compare_logits(la, lb, data.y_test) == pytest.approx(_by_hand(la, lb, data.y_test), rel=1e-6, abs=1e-9)
