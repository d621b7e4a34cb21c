"""RD (Ranking Distillation, Tang & Wang, KDD 2018): the teacher's top-K as weighted positives.

``-sum_r w_r log sigmoid(s_r)`` over the teacher's top-K items, with a static position weight
``w_a(r) ~ exp(-r / lambda)`` and, after a warm-up, a dynamic weight
``w_b(r) = tanh(max(mu * (r_hat - r), 0))`` that grows when the student ranks the item below
the teacher (``r_hat`` estimated from ``rd_samples`` uniformly sampled items); the hybrid
weight ``w_a * w_b`` is normalised per user.
"""

import torch
import torch.nn.functional as F

from recbole_derrd.terms.base import (DistillationTerm, check_room, non_negative, non_negative_int,
                                      positive, positive_int)


class RD(DistillationTerm):
    name = "RD"

    def __init__(self, context, weight, k, lam, mu, samples, warmup):
        super().__init__(weight)
        self.student, self.n_items = context.student, context.n_items
        self.k, self.lam, self.mu, self.samples, self.warmup = k, lam, mu, samples, warmup
        positions = torch.arange(1, k + 1, dtype=torch.float32)
        static = torch.exp(-positions / lam)
        self.static_weights = (static / static.sum()).to(context.device)
        self.top = None
        self.epoch = 0

    @classmethod
    def from_config(cls, config, context):
        weight = non_negative(config, "rd_weight")
        k = positive_int(config, "rd_k")
        lam = positive(config, "rd_lambda")
        mu = positive(config, "rd_mu")
        samples = positive_int(config, "rd_samples")
        warmup = non_negative_int(config, "rd_warmup_epochs")
        check_room(context, k, "rd_k=%d" % k)
        return cls(context, weight, k, lam, mu, samples, warmup)

    def prepare(self, context, train_matrix):
        if self.top is None:
            self.top = torch.as_tensor(context.teacher_ranking(train_matrix, self.k), device=context.device)

    def start_epoch(self, epoch):
        self.epoch = epoch

    def weights(self, users, scores):
        """[U, K] hybrid weights (static only during the warm-up), no gradient."""
        static = self.static_weights.expand(len(users), -1)
        if self.epoch < self.warmup:
            return static
        with torch.no_grad():
            sampled = torch.randint(1, self.n_items, (len(users), self.samples), device=scores.device)
            sampled_scores = self.student.score(users, sampled)
            above = (sampled_scores.unsqueeze(1) > scores.detach().unsqueeze(2)).sum(-1)
            rank_hat = 1 + above.float() * (self.n_items - 1) / self.samples  # student's rank, estimated
            positions = torch.arange(1, self.k + 1, device=scores.device, dtype=torch.float32)
            dynamic = torch.tanh(torch.clamp(self.mu * (rank_hat - positions), min=0))
            hybrid = static * dynamic
            return hybrid / hybrid.sum(1, keepdim=True).clamp_min(1e-12)

    def raw_loss(self, batch):
        if self.top is None:
            raise RuntimeError("RD must be trained with its DistillationTrainer (teacher not prepared)")
        scores = self.student.score(batch.users, self.top[batch.users])
        return -(self.weights(batch.users, scores) * F.logsigmoid(scores)).sum()
