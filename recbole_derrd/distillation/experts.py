"""DE — Distillation Experts (Kang et al., CIKM 2020, Sec. 3.1).

M small MLP experts map a student representation into the teacher's space; a selection
network that sees the *teacher's* representation picks one expert per row with a
Gumbel-softmax whose temperature is annealed towards 0 (so the choice becomes hard).

All M experts are evaluated as two dense matrix products instead of M small ones: the first
layers are concatenated into one ``[d_s, M*h]`` weight, and the selection-weighted second
layers collapse into one ``[n, M*h] @ [M*h, d_t]`` product, which never materialises the
``[n, M, d_t]`` tensor of all expert outputs.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

GUMBEL_EPS = 1e-10


def tau_at_epoch(epoch, start=1.0, end=1e-10, anneal_epochs=1000):
    """Geometric annealing: ``start`` at epoch 0, ``end`` from ``anneal_epochs`` on."""
    if anneal_epochs <= 0:
        return end
    progress = min(max(epoch, 0) / anneal_epochs, 1.0)
    return max(start * (end / start) ** progress, end)


def gumbel_softmax(alpha, tau, noise=None):
    """s = softmax((log(alpha + 1e-10) + g) / tau), g ~ Gumbel(0, 1); soft, no straight-through."""
    if noise is None:
        uniform = torch.rand_like(alpha)
        noise = -torch.log(-torch.log(uniform + GUMBEL_EPS) + GUMBEL_EPS)
    return F.softmax((torch.log(alpha + GUMBEL_EPS) + noise) / tau, dim=-1)


def expert_hidden_size(student_dim, teacher_dim):
    """(d_s + d_t) // 2, or d_s // 2 when the sizes are equal (as in the official code)."""
    if student_dim == teacher_dim:
        return max(student_dim // 2, 1)
    return (student_dim + teacher_dim) // 2


class DistillationExperts(nn.Module):
    """M experts d_s -> h -> d_t (ReLU) plus a selection network Linear(d_t -> M) + softmax."""

    def __init__(self, student_dim, teacher_dim, num_experts=30):
        super().__init__()
        if num_experts < 1:
            raise ValueError("num_experts must be >= 1, got %r" % num_experts)
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.num_experts = num_experts
        self.hidden = expert_hidden_size(student_dim, teacher_dim)
        m, h = num_experts, self.hidden
        # Each expert is initialised like torch's nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        self.w1 = nn.Parameter(self._uniform((student_dim, m * h), student_dim))
        self.b1 = nn.Parameter(self._uniform((m * h,), student_dim))
        self.w2 = nn.Parameter(self._uniform((m * h, teacher_dim), h))
        self.b2 = nn.Parameter(self._uniform((m, teacher_dim), h))
        self.selection = nn.Linear(teacher_dim, m) if m > 1 else None

    @staticmethod
    def _uniform(shape, fan_in):
        bound = 1.0 / math.sqrt(fan_in)
        return torch.empty(shape).uniform_(-bound, bound)

    def selection_weights(self, teacher_repr, tau):
        """[n, M] expert weights for each row; all ones when there is a single expert."""
        if self.selection is None:
            return teacher_repr.new_ones(teacher_repr.shape[0], 1)
        alpha = F.softmax(self.selection(teacher_repr), dim=-1)
        return gumbel_softmax(alpha, tau)

    def mix(self, student_repr, weights):
        """sum_m weights[:, m] * E_m(student_repr) -> [n, d_t]."""
        n = student_repr.shape[0]
        hidden = F.relu(student_repr @ self.w1 + self.b1)  # [n, M*h]
        weighted = (hidden.view(n, self.num_experts, self.hidden) * weights.unsqueeze(-1))
        return weighted.view(n, -1) @ self.w2 + weights @ self.b2

    def forward(self, student_repr, teacher_repr, tau):
        return self.mix(student_repr, self.selection_weights(teacher_repr, tau))

    def loss(self, student_repr, teacher_repr, tau):
        """Squared L2 distance to the teacher representation, summed over rows."""
        teacher_repr = teacher_repr.detach()
        return (teacher_repr - self(student_repr, teacher_repr, tau)).pow(2).sum()
