"""DE: expert shapes and sizes, the Gumbel-softmax, the tau schedule, the mixing and its loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from recbole_derrd.distillation import DistillationExperts, gumbel_softmax, tau_at_epoch
from recbole_derrd.distillation.experts import expert_hidden_size


def test_hidden_size_rule():
    assert expert_hidden_size(20, 200) == 110
    assert expert_hidden_size(64, 64) == 32


def test_shapes():
    experts = DistillationExperts(20, 200, num_experts=30)
    out = experts(torch.randn(7, 20), torch.randn(7, 200), tau=1.0)
    assert out.shape == (7, 200)
    assert experts.selection.in_features == 200 and experts.selection.out_features == 30


def test_tau_schedule():
    assert tau_at_epoch(0) == 1.0
    assert tau_at_epoch(500) == pytest.approx(1e-5)
    assert tau_at_epoch(1000) == pytest.approx(1e-10)
    assert tau_at_epoch(5000) == pytest.approx(1e-10)  # floored
    assert tau_at_epoch(100) == pytest.approx(10 ** -1.0)
    assert tau_at_epoch(3, start=2.0, end=0.5, anneal_epochs=6) == pytest.approx(1.0)


def test_gumbel_softmax_formula():
    alpha = torch.tensor([[0.7, 0.2, 0.1]])
    noise = torch.tensor([[0.3, -0.1, 1.2]])
    expected = F.softmax((torch.log(alpha + 1e-10) + noise) / 0.5, dim=-1)
    torch.testing.assert_close(gumbel_softmax(alpha, 0.5, noise), expected)
    weights = gumbel_softmax(alpha.repeat(1000, 1), 1e-4)
    assert torch.allclose(weights.sum(-1), torch.ones(1000))
    assert (weights.max(-1).values > 0.999).float().mean() > 0.99  # nearly one-hot at low tau


def explicit_experts(experts, x, weights):
    """The definition: sum_m w_m * Linear2_m(ReLU(Linear1_m(x)))."""
    m, h = experts.num_experts, experts.hidden
    total = 0
    for i in range(m):
        w1 = experts.w1[:, i * h:(i + 1) * h]
        b1 = experts.b1[i * h:(i + 1) * h]
        w2 = experts.w2[i * h:(i + 1) * h]
        out = F.relu(x @ w1 + b1) @ w2 + experts.b2[i]
        total = total + weights[:, i:i + 1] * out
    return total


def test_mixing_matches_per_expert_definition():
    torch.manual_seed(0)
    experts = DistillationExperts(6, 10, num_experts=5).double()
    x = torch.randn(9, 6, dtype=torch.float64)
    weights = torch.softmax(torch.randn(9, 5, dtype=torch.float64), -1)
    torch.testing.assert_close(experts.mix(x, weights), explicit_experts(experts, x, weights))


def test_loss_is_summed_squared_distance():
    torch.manual_seed(0)
    experts = DistillationExperts(4, 8, num_experts=3).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    t = torch.randn(5, 8, dtype=torch.float64)
    torch.manual_seed(1)
    loss = experts.loss(x, t, tau=0.5)
    torch.manual_seed(1)
    out = experts(x, t, tau=0.5)
    assert loss.item() == pytest.approx(((t - out) ** 2).sum().item())


def test_single_expert_has_no_selection():
    experts = DistillationExperts(4, 8, num_experts=1)
    assert experts.selection is None
    x, t = torch.randn(3, 4), torch.randn(3, 8)
    torch.testing.assert_close(experts(x, t, 1.0), explicit_experts(experts, x, torch.ones(3, 1)))


def test_gradients_reach_experts_selection_and_student_not_teacher():
    experts = DistillationExperts(4, 8, num_experts=3)
    student = torch.randn(5, 4, requires_grad=True)
    teacher = torch.randn(5, 8, requires_grad=True)
    experts.loss(student, teacher, tau=1.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None  # the target is detached
    for name, p in experts.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_initialisation_like_linear():
    experts = DistillationExperts(20, 200, num_experts=30)
    assert experts.w1.abs().max() <= 1 / math.sqrt(20)
    assert experts.w2.abs().max() <= 1 / math.sqrt(110)
