"""The paper's distillation baselines on the same teacher machinery: RD and CD.

* ``RD`` — Ranking Distillation (Tang & Wang, KDD 2018): the teacher's top-K items are extra
  positives for the student, ``-sum_r w_r log sigmoid(s_r)``, with a static position weight
  ``w_a(r) ~ exp(-r / lambda)`` and, after a warm-up, a dynamic weight
  ``w_b(r) = tanh(max(mu * (r_hat - r), 0))`` that grows when the student ranks the item
  below the teacher (``r_hat`` estimated from ``rd_samples`` uniformly sampled items); the
  hybrid weight is ``w_a * w_b``, normalised per user.
* ``CD`` — Collaborative Distillation (Lee et al., ICDM 2019): per user and epoch, unobserved
  items are sampled with rank-aware probability ``p(rank) ~ exp(-gamma * rank / |I_u^-|)`` on
  the teacher's ranking of the user's unobserved items, labelled softly with
  ``q = sigmoid(teacher score / t)``, and the student's scores are trained on them with binary
  cross-entropy.

Both are losses *added* to the student's own, with the same ``kd_reduction`` balance as DE and
RRD, and train with the plugin's :class:`~recbole_derrd.trainer.DistillationTrainer`.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from recbole_derrd.distillation.ranking import check_room
from recbole_derrd.model.distilled import (DistilledRecommender, _non_negative, _positive, _positive_int,
                                           user_token_label)

#: CD keeps the teacher's ranking down to the depth that holds all but this much probability.
CD_TAIL_MASS = 1e-6


class RD(DistilledRecommender):
    """Student trained with Ranking Distillation (Tang & Wang, KDD 2018)."""

    property_files = ("distillation.yaml", "model/RD.yaml")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.rd_weight = _non_negative(config, "rd_weight")
        self.rd_k = _positive_int(config, "rd_k")
        self.rd_lambda = _positive(config, "rd_lambda")
        self.rd_mu = _positive(config, "rd_mu")
        self.rd_samples = _positive_int(config, "rd_samples")
        self.rd_warmup = int(_non_negative(config, "rd_warmup_epochs"))
        check_room(self.training_counts(dataset), self.n_items, self.rd_k, "rd_k=%d" % self.rd_k,
                   user_token_label(dataset))
        positions = torch.arange(1, self.rd_k + 1, dtype=torch.float32)
        static = torch.exp(-positions / self.rd_lambda)
        self.register_buffer("rd_static_weights", static / static.sum(), persistent=False)
        self.rd_top = None
        self.loss_part_names = self.loss_part_names + ("RD",)

    def prepare(self, train_data, valid_data, show_progress=False):
        super().prepare(train_data, valid_data, show_progress=show_progress)
        if self.rd_top is None:
            top, _ = self.teacher_ranking(train_data, self.rd_k)
            self.rd_top = torch.as_tensor(top, device=self.device)

    def rd_weights(self, users, scores):
        """[U, K] hybrid weights (static only during the warm-up), no gradient."""
        static = self.rd_static_weights.expand(len(users), -1)
        if self.epoch < self.rd_warmup:
            return static
        with torch.no_grad():
            sampled = torch.randint(1, self.n_items, (len(users), self.rd_samples), device=scores.device)
            sampled_scores = self.student_adapter.score(users, sampled)
            above = (sampled_scores.unsqueeze(1) > scores.detach().unsqueeze(2)).sum(-1)
            rank_hat = 1 + above.float() * (self.n_items - 1) / self.rd_samples  # student's rank, estimated
            positions = torch.arange(1, self.rd_k + 1, device=scores.device, dtype=torch.float32)
            dynamic = torch.tanh(torch.clamp(self.rd_mu * (rank_hat - positions), min=0))
            hybrid = static * dynamic
            return hybrid / hybrid.sum(1, keepdim=True).clamp_min(1e-12)

    def rd_loss(self, interaction):
        if self.rd_top is None:
            raise RuntimeError("RD must be trained with its DistillationTrainer (teacher not prepared)")
        users = torch.unique(interaction[self.USER_ID])
        scores = self.student_adapter.score(users, self.rd_top[users])
        return -(self.rd_weights(users, scores) * F.logsigmoid(scores)).sum()

    def extra_losses(self, interaction):
        return [self.rd_weight * self.rd_loss(interaction)]


class CD(DistilledRecommender):
    """Student trained with Collaborative Distillation (Lee et al., ICDM 2019)."""

    property_files = ("distillation.yaml", "model/CD.yaml")

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.cd_weight = _non_negative(config, "cd_weight")
        self.cd_samples = _positive_int(config, "cd_samples")
        self.cd_gamma = _positive(config, "cd_gamma")
        self.cd_temperature = _positive(config, "cd_temperature")
        counts = self.training_counts(dataset)
        self.cd_unobserved = torch.as_tensor((self.n_items - 1) - counts, dtype=torch.float64)
        check_room(counts, self.n_items, 1, "CD", user_token_label(dataset))
        # Depth of the teacher ranking kept: where the rank-aware law leaves < CD_TAIL_MASS
        # (-ln(mass) * |I_u^-| / gamma ranks), at most the smallest user's unobserved count.
        needed = math.ceil(-math.log(CD_TAIL_MASS) * float(self.cd_unobserved.max()) / self.cd_gamma)
        self.cd_depth = int(min(needed, float(self.cd_unobserved[1:].min()) if self.n_users > 1 else needed))
        self.cd_ranking = None
        self.cd_items = None
        self.loss_part_names = self.loss_part_names + ("CD",)

    def prepare(self, train_data, valid_data, show_progress=False):
        super().prepare(train_data, valid_data, show_progress=show_progress)
        if self.cd_ranking is None:
            ranking, _ = self.teacher_ranking(train_data, self.cd_depth)
            self.cd_ranking = torch.as_tensor(ranking.astype(np.int32), device=self.device)

    def sample_ranks(self, epoch):
        """[n_users, S] 0-based ranks with P(r) ~ q^r, q = exp(-gamma / |I_u^-|), r < depth.

        Inverse CDF of the geometric law truncated at the kept depth; seeded by (seed, epoch).
        """
        generator = torch.Generator().manual_seed(int(self.config["seed"]) * 1000003 + int(epoch))
        uniform = torch.rand(self.n_users, self.cd_samples, generator=generator, dtype=torch.float64)
        log_q = -self.cd_gamma / self.cd_unobserved.clamp_min(1).unsqueeze(1)  # ln q < 0
        tail = torch.exp(log_q * self.cd_depth)  # q^depth
        ranks = torch.floor(torch.log1p(-uniform * (1 - tail)) / log_q)
        return ranks.clamp_(0, self.cd_depth - 1).long()

    def start_epoch(self, epoch):
        super().start_epoch(epoch)
        if self.cd_ranking is None:
            raise RuntimeError("CD must be trained with its DistillationTrainer (teacher not prepared)")
        ranks = self.sample_ranks(epoch).to(self.cd_ranking.device)
        self.cd_items = torch.gather(self.cd_ranking, 1, ranks).long()

    def cd_loss(self, interaction):
        if self.cd_items is None:
            raise RuntimeError("CD must be trained with its DistillationTrainer (no sampled items)")
        users = torch.unique(interaction[self.USER_ID])
        items = self.cd_items[users]
        scores = self.student_adapter.score(users, items)
        with torch.no_grad():
            soft = torch.sigmoid(self.teacher_adapter.score(users, items) / self.cd_temperature)
        return F.binary_cross_entropy_with_logits(scores, soft, reduction="sum")

    def extra_losses(self, interaction):
        return [self.cd_weight * self.cd_loss(interaction)]
