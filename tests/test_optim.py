import copy
import math

import pytest
import torch

from hpcm_tune.optim import OPTIMIZERS, CautiousAdam, build_optimizer


def _hand_cautious_adam(p, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """Cautious Adam written out element by element with Python floats."""
    p = list(p)
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    for t, g in enumerate(grads, start=1):
        m = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g)]
        v = [b2 * vi + (1 - b2) * gi * gi for vi, gi in zip(v, g)]
        u = [(mi / (1 - b1**t)) / (math.sqrt(vi / (1 - b2**t)) + eps) for mi, vi in zip(m, v)]
        keep = [1.0 if ui * gi > 0 else 0.0 for ui, gi in zip(u, g)]
        scale = len(keep) / max(sum(keep), 1.0)
        p = [pi - lr * ui * ki * scale for pi, ui, ki in zip(p, u, keep)]
    return p


def test_cautious_adam_matches_a_hand_computation():
    # The second gradient flips the sign of two entries: their momentum still points the old way, so the
    # cautious mask drops them and the two kept entries are scaled by 4/2.
    grads = [[1.0, -2.0, 0.5, 3.0], [-0.1, 0.2, 0.4, 1.0], [0.3, 0.1, -0.2, -0.5]]
    start = [0.5, -0.25, 1.0, 0.0]
    param = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    opt = CautiousAdam([param], lr=0.1)
    for g in grads:
        param.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    expected = _hand_cautious_adam(start, grads, lr=0.1)
    assert param.detach().tolist() == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # It is not plain Adam on this sequence.
    plain = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    adam = torch.optim.Adam([plain], lr=0.1)
    for g in grads:
        plain.grad = torch.tensor(g, dtype=torch.float64)
        adam.step()
    assert not torch.allclose(plain.detach(), param.detach())


def test_cautious_adam_equals_adam_when_update_and_gradient_agree():
    # A constant gradient: every update agrees with it in sign, nothing is masked, the scale is 1.
    a = torch.nn.Parameter(torch.tensor([1.0, -1.0, 2.0], dtype=torch.float64))
    b = torch.nn.Parameter(a.detach().clone())
    opt_a, opt_b = CautiousAdam([a], lr=0.01), torch.optim.Adam([b], lr=0.01)
    for _ in range(5):
        for p, o in ((a, opt_a), (b, opt_b)):
            p.grad = torch.tensor([0.3, -0.7, 0.1], dtype=torch.float64)
            o.step()
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_cautious_adam_state_round_trips():
    p = torch.nn.Parameter(torch.ones(3))
    opt = CautiousAdam([p], lr=0.01)
    p.grad = torch.tensor([1.0, -1.0, 0.5])
    opt.step()
    q = torch.nn.Parameter(p.detach().clone())
    other = CautiousAdam([q], lr=0.01)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))  # torch shares tensors otherwise
    for x, o in ((p, opt), (q, other)):
        x.grad = torch.tensor([-0.5, -1.0, 0.5])
        o.step()
    assert torch.equal(p, q)


def test_registry_names_and_errors():
    assert set(OPTIMIZERS.names()) == {"adam", "cautious_adam"}
    assert isinstance(build_optimizer("adam", [torch.nn.Parameter(torch.ones(1))], 1e-3), torch.optim.Adam)
    with pytest.raises(ValueError, match="adam, cautious_adam"):
        build_optimizer("sgd", [torch.nn.Parameter(torch.ones(1))], 1e-3)
    with pytest.raises(ValueError, match="lr"):
        CautiousAdam([torch.nn.Parameter(torch.ones(1))], lr=0.0)
