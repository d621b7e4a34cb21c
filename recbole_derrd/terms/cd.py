"""CD (Collaborative Distillation, Lee et al., ICDM 2019): soft labels on rank-sampled items.

Per user and epoch, unobserved items are sampled with rank-aware probability
``p(rank) ~ exp(-gamma * rank / |I_u^-|)`` on the teacher's ranking of the user's unobserved
items, labelled softly with ``q = sigmoid(teacher score / t)``; the student's scores are
trained on them with binary cross-entropy.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F

from recbole_derrd.terms.base import DistillationTerm, check_room, non_negative, positive, positive_int

#: CD keeps the teacher's ranking down to the depth that holds all but this much probability.
CD_TAIL_MASS = 1e-6


class CD(DistillationTerm):
    name = "CD"

    def __init__(self, context, weight, samples, gamma, temperature):
        super().__init__(weight)
        self.student, self.teacher = context.student, context.teacher
        self.n_users, self.seed = context.n_users, context.seed
        self.samples, self.gamma, self.temperature = samples, gamma, temperature
        counts = np.asarray(context.train_counts)
        self.unobserved = torch.as_tensor((context.n_items - 1) - counts, dtype=torch.float64)
        # Depth of the teacher ranking kept: where the rank-aware law leaves < CD_TAIL_MASS
        # (-ln(mass) * |I_u^-| / gamma ranks), at most the smallest user's unobserved count.
        needed = math.ceil(-math.log(CD_TAIL_MASS) * float(self.unobserved.max()) / gamma)
        self.depth = int(min(needed, float(self.unobserved[1:].min()) if self.n_users > 1 else needed))
        self.ranking = None
        self.items = None

    @classmethod
    def from_config(cls, config, context):
        weight = non_negative(config, "cd_weight")
        samples = positive_int(config, "cd_samples")
        gamma = positive(config, "cd_gamma")
        temperature = positive(config, "cd_temperature")
        check_room(context, 1, "CD")
        return cls(context, weight, samples, gamma, temperature)

    def prepare(self, context, train_matrix):
        if self.ranking is None:
            ranking = context.teacher_ranking(train_matrix, self.depth)
            self.ranking = torch.as_tensor(ranking.astype(np.int32), device=context.device)

    def sample_ranks(self, epoch):
        """[n_users, S] 0-based ranks with P(r) ~ q^r, q = exp(-gamma / |I_u^-|), r < depth.

        Inverse CDF of the geometric law truncated at the kept depth; seeded by (seed, epoch).
        """
        generator = torch.Generator().manual_seed(int(self.seed) * 1000003 + int(epoch))
        uniform = torch.rand(self.n_users, self.samples, generator=generator, dtype=torch.float64)
        log_q = -self.gamma / self.unobserved.clamp_min(1).unsqueeze(1)  # ln q < 0
        tail = torch.exp(log_q * self.depth)  # q^depth
        ranks = torch.floor(torch.log1p(-uniform * (1 - tail)) / log_q)
        return ranks.clamp_(0, self.depth - 1).long()

    def start_epoch(self, epoch):
        if self.ranking is None:
            raise RuntimeError("CD must be trained with its DistillationTrainer (teacher not prepared)")
        ranks = self.sample_ranks(epoch).to(self.ranking.device)
        self.items = torch.gather(self.ranking, 1, ranks).long()

    def raw_loss(self, batch):
        if self.items is None:
            raise RuntimeError("CD must be trained with its DistillationTrainer (no sampled items)")
        items = self.items[batch.users]
        scores = self.student.score(batch.users, items)
        with torch.no_grad():
            soft = torch.sigmoid(self.teacher.score(batch.users, items) / self.temperature)
        return F.binary_cross_entropy_with_logits(scores, soft, reduction="sum")
