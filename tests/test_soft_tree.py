"""The soft decision tree (Frosst & Hinton 2017): path probabilities, the paper's loss and
balance penalty against hand computations, max-path prediction, the JSON interpreter's
parity with PyTorch, training on digits, distillation and the depth cap on the CLI."""
import json
import math

import pytest
import torch
import torch.nn.functional as F

from compresslab.cli import main
from compresslab.data import load_dataset
from compresslab.models import create_model
from compresslab.models.soft_tree import predict_json, tree_to_json
from compresslab.train import Recipe, compose_loss, evaluate_logits, fit
from compresslab.train.losses import StepContext


@pytest.fixture(autouse=True)
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tree(depth=3, shape=(1, 4, 4), classes=5, seed=0, **options):
    torch.manual_seed(seed)
    model = create_model("soft-tree", num_classes=classes, in_channels=shape[0], input_shape=shape, depth=depth, **options)
    with torch.no_grad():  # spread the leaves and sharpen the splits, so the tests see more than the init
        model.phi.normal_(0, 2)
        model.inner.weight.normal_(0, 1)
        model.log_beta.fill_(0.3)
    return model


def _depth2():
    """Depth-2 tree on 2 inputs with fixed weights, β = 1."""
    model = create_model("soft-tree", num_classes=3, in_channels=1, input_shape=(1, 2), depth=2, penalty=0.3)
    with torch.no_grad():
        model.inner.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, 0.5], [-1.0, 3.0]]))
        model.inner.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
        model.log_beta.zero_()
        model.phi.copy_(torch.tensor([[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.5, 0.5, 0.0], [-1.0, 0.0, 1.0]]))
    x = torch.tensor([[0.2, -0.4], [1.0, 1.0], [-0.5, 0.3], [2.0, -1.0]])
    return model, x


def _by_hand(model, x):
    """Per example: [p0, p1, p2] and the four leaf path probabilities (left = 1 - p)."""
    sig = lambda z: 1 / (1 + math.exp(-z))  # noqa: E731
    w, b = model.inner.weight.tolist(), model.inner.bias.tolist()
    rows = []
    for xi in x.tolist():
        p = [sig(w[i][0] * xi[0] + w[i][1] * xi[1] + b[i]) for i in range(3)]
        leaves = [(1 - p[0]) * (1 - p[1]), (1 - p[0]) * p[1], p[0] * (1 - p[2]), p[0] * p[2]]
        rows.append((p, leaves))
    return rows


def test_path_probabilities_sum_to_one_and_match_the_products():
    model = _tree(depth=5)
    P = model.path_probabilities(torch.randn(64, 1, 4, 4))
    assert P.shape == (64, 32) and (P >= 0).all()
    torch.testing.assert_close(P.sum(1), torch.ones(64))
    model, x = _depth2()
    expected = torch.tensor([leaves for _, leaves in _by_hand(model, x)])
    torch.testing.assert_close(model.path_probabilities(x), expected)
    torch.testing.assert_close(model.leaf_distributions().sum(1), torch.ones(4))


def test_balance_penalty_by_hand():
    model, x = _depth2()
    rows = _by_hand(model, x)
    reach = [[1.0, 1 - p[0], p[0]] for p, _ in rows]  # P^i: probability of reaching inner node i
    alpha = [sum(r[i] * p[i] for r, (p, _) in zip(reach, rows)) / sum(r[i] for r in reach) for i in range(3)]
    lam = [0.3, 0.15, 0.15]  # penalty · 2^-depth(i)
    expected = -sum(lam[i] * (0.5 * math.log(alpha[i]) + 0.5 * math.log(1 - alpha[i])) for i in range(3))
    assert model.balance_penalty(x).item() == pytest.approx(expected, rel=1e-5)


def test_loss_by_hand_and_through_the_term():
    model, x = _depth2()
    y = torch.tensor([0, 1, 2, 1])
    T = F.one_hot(y, 3).float()
    log_q = [[v - math.log(sum(math.exp(u) for u in row)) for v in row] for row in model.phi.tolist()]
    expected = sum(sum(P[l] * -sum(T[n, k].item() * log_q[l][k] for k in range(3)) for l in range(4))
                   for n, (_, P) in enumerate(_by_hand(model, x))) / len(x)
    assert model.leaf_loss(x, T).item() == pytest.approx(expected, rel=1e-5)
    term = compose_loss({"soft-tree": 1.0})
    ctx = StepContext(model=model, x=x, y=y, idx=torch.arange(4), logits=model(x))
    total, _ = term(ctx)
    assert total.item() == pytest.approx(expected + model.balance_penalty(x).item(), rel=1e-5)


def test_max_path_prediction_is_the_most_probable_leaf():
    model = _tree(depth=4).eval()
    x = torch.randn(50, 1, 4, 4)
    best = model.path_probabilities(x).argmax(1)
    torch.testing.assert_close(model(x), model.leaf_distributions().log()[best])
    mixture = _tree(depth=4, predict="mixture").eval()
    torch.testing.assert_close(mixture(x).exp(), mixture.path_probabilities(x) @ mixture.leaf_distributions())
    model.train()  # training always uses the mixture
    torch.testing.assert_close(model(x).exp(), model.path_probabilities(x) @ model.leaf_distributions())


@pytest.mark.parametrize("predict", ["max-path", "mixture"])
def test_json_interpreter_matches_pytorch(predict):
    model = _tree(depth=4, predict=predict).eval()
    x = torch.randn(200, 1, 4, 4)
    tree = json.loads(json.dumps(tree_to_json(model)))
    assert tree["depth"] == 4 and tree["input_shape"] == [1, 4, 4] and len(tree["inner"]) == 15
    got = torch.tensor([predict_json(tree, row.flatten().tolist(), predict == "mixture") for row in x], dtype=torch.float64)
    with torch.no_grad():
        ref = model(x).double().exp()
    assert torch.equal(got.argmax(1), ref.argmax(1))
    assert (got - ref).abs().max().item() < 1e-6


def test_trains_on_digits_far_above_chance():
    data = load_dataset("digits")
    torch.manual_seed(0)
    model = create_model("soft-tree", num_classes=10, in_channels=1, input_shape=tuple(data.x_train.shape[1:]), depth=4)
    fit(model, data, Recipe(optimizer="adam", lr=0.01, epochs=20, weight_decay=0.0), loss={"soft-tree": 1.0}, seed=0)
    accuracy = (evaluate_logits(model, data.x_test).argmax(1) == data.y_test).float().mean().item()
    assert accuracy > 0.6  # chance is 0.1


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_distill_into_a_soft_tree_then_export_json(capsys, tmp_path):
    runs = tmp_path / "runs"
    code, out, err = _cli(capsys, "train", "--model", "mlp", "-o", "widths=[32]", "--data", "digits", "--epochs", 2,
                          "--runs", runs, "--quiet", "--json")
    assert code == 0, err
    teacher = json.loads(out)["checkpoint"]
    for loss in ("kd=1", "soft-tree=1"):
        code, out, err = _cli(capsys, "distill", teacher, "--student", "soft-tree", "-o", "depth=3", "--data", "digits",
                              "--loss", loss, "--epochs", 1, "--runs", runs, "--quiet", "--json")
        assert code == 0, err
    student = json.loads(out)["checkpoint"]
    target = tmp_path / "tree.json"
    code, out, err = _cli(capsys, "export", student, "--tree-json", target, "--data", "digits", "--parity-samples", 50, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["parity"]["top1_agreement"] == 1.0 and result["parity"]["max_abs_diff"] < 1e-6
    assert json.loads(target.read_text())["depth"] == 3


def test_depth_over_the_cap_is_a_one_line_user_error(capsys, tmp_path):
    code, out, err = _cli(capsys, "train", "--model", "soft-tree", "-o", "depth=13", "--data", "digits", "--epochs", 1,
                          "--runs", tmp_path / "runs", "--quiet")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "depth" in err, err
