"""FGSM / PGD and the transfer rate of adversarial examples."""
import pytest
import torch
from torch import nn

from compresslab.errors import UserError
from compresslab.measure.adversarial import fgsm, pgd, transfer_rate


def _linear(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 10))


def _xy(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 40, generator=g), torch.randint(0, 10, (n,), generator=g)


def test_fgsm_on_a_linear_model_matches_the_analytic_gradient():
    model, (x, y) = _linear(), _xy()
    w, b = model[1].weight, model[1].bias
    with torch.no_grad():
        p = torch.softmax(x.flatten(1) @ w.T + b, 1)
        grad = (p - torch.nn.functional.one_hot(y, 10)) @ w  # dCE/dx for a linear softmax model
    expected = x + 0.3 * grad.sign().view_as(x)
    assert torch.allclose(fgsm(model, x, y, 0.3), expected)


def test_pgd_stays_in_the_ball_beats_fgsm_and_is_deterministic():
    model, (x, y) = _linear(), _xy(200)
    eps = 0.2
    a = pgd(model, x, y, eps, steps=10, generator=torch.Generator().manual_seed(3))
    assert (a - x).abs().max() <= eps + 1e-6
    b = pgd(model, x, y, eps, steps=10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    ce = nn.functional.cross_entropy
    with torch.no_grad():
        assert ce(model(a), y) >= ce(model(fgsm(model, x, y, eps)), y) - 1e-4
        assert ce(model(a), y) > ce(model(x), y)


def test_no_parameter_grads_and_training_flag_restored():
    model, (x, y) = _linear(), _xy()
    model.train()
    pgd(model, x, y, 0.1, steps=2)
    transfer_rate(model, {"same": model}, x, y, eps=0.1)
    assert model.training and all(p.grad is None for p in model.parameters())


def test_transfer_to_itself_and_to_a_copy_is_total_and_to_a_blind_model_is_zero():
    model, (x, _) = _linear(), _xy(300)
    with torch.no_grad():
        y = model(x).argmax(1)  # the reference is right on every clean example
    copy = _linear()

    class Blind(nn.Module):  # outputs the true labels whatever the input (one batch): never fooled
        def __init__(self, labels):
            super().__init__()
            self.labels = labels
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, inp):
            n = inp.shape[0]
            out = torch.full((n, 10), -10.0)
            out[torch.arange(n), self.labels[:n]] = 10.0
            return out + 0 * self.w

    blind = Blind(y)
    r = transfer_rate(model, {"self": model, "copy": copy, "blind": blind}, x, y, eps=2.0)
    assert r["self"]["n_eligible"] > 0 and r["self"]["reference_fooled"] > 0.5
    assert r["self"]["transfer_rate"] == 1.0 and r["copy"]["transfer_rate"] == 1.0
    assert r["self"]["agreement_on_adversarial"] == 1.0
    assert r["blind"]["transfer_rate"] == 0.0 and r["blind"]["adv_accuracy"] == 1.0
    single = transfer_rate(model, copy, x, y, attack="pgd", eps=2.0, steps=3)
    assert single["transfer_rate"] == 1.0


@pytest.mark.parametrize("kwargs, message", [({"eps": 0}, "eps"), ({"eps": 0.1, "attack": "cw"}, "unknown attack"),
                                             ({"eps": 0.1, "attack": "pgd", "steps": 0}, "steps")])
def test_bad_settings_are_user_errors(kwargs, message):
    model, (x, y) = _linear(), _xy(8)
    with pytest.raises(UserError, match=message):
        transfer_rate(model, {"m": model}, x, y, **kwargs)
