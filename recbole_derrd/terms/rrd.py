"""RRD (Relaxed Ranking Distillation): the teacher's top items, in its order, above sampled ones."""

import numpy as np
import torch

from recbole_derrd.distillation import RRDSampler, reference_relaxed_ranking_loss, relaxed_ranking_loss
from recbole_derrd.terms.base import (KD_IMPLEMENTATIONS, DistillationTerm, check_room, non_negative, one_of,
                                      positive, positive_int)

RRD_SAMPLING = ("sample", "top")


class RRD(DistillationTerm):
    """Per user and epoch, K interesting items drawn from the teacher's top-N (rank-discounted
    with temperature T, or its top K) and L uninteresting items from the rest; the student must
    rank the interesting ones in the teacher's order above the uninteresting ones."""

    name = "RRD"

    def __init__(self, context, weight, top_n, k, l, temperature, sampling, reference=False):
        super().__init__(weight)
        self.loss_function = reference_relaxed_ranking_loss if reference else relaxed_ranking_loss
        self.student = context.student
        self.top_n, self.k, self.l = top_n, k, l
        self.temperature, self.sampling = temperature, sampling
        self.sampler = None
        self.lists = None

    @classmethod
    def from_config(cls, config, context):
        weight = non_negative(config, "rrd_weight")
        top_n = positive_int(config, "rrd_top_n")
        k = positive_int(config, "rrd_k")
        l = positive_int(config, "rrd_l")
        temperature = positive(config, "rrd_temperature")
        sampling = one_of(config, "rrd_sampling", RRD_SAMPLING)
        if k > top_n:
            raise ValueError("rrd_k=%d must not exceed rrd_top_n=%d" % (k, top_n))
        # Fail before the teacher is trained if some user cannot get N + L distinct items.
        check_room(context, top_n + l, "rrd_top_n + rrd_l = %d" % (top_n + l))
        reference = one_of(config, "kd_implementation", KD_IMPLEMENTATIONS) == "reference"
        return cls(context, weight, top_n, k, l, temperature, sampling, reference)

    def prepare(self, context, train_matrix):
        if self.sampler is None:
            top = context.teacher_ranking(train_matrix, self.top_n)
            self.sampler = RRDSampler(top, train_matrix, self.k, self.l, self.temperature,
                                      mode=self.sampling, seed=context.seed)
            self.device = context.device

    def start_epoch(self, epoch):
        if self.sampler is None:
            raise RuntimeError("RRD must be trained with its DistillationTrainer (teacher not prepared)")
        interesting, uninteresting = self.sampler.sample(epoch)
        # One [n_users, K + L] table (K interesting, then L uninteresting items per user): a
        # batch's lists are then one index_select instead of two advanced indexings and a cat.
        self.lists = torch.as_tensor(np.concatenate([interesting, uninteresting], 1), device=self.device)

    def raw_loss(self, batch):
        if self.lists is None:
            raise RuntimeError("RRD must be trained with its DistillationTrainer (no RRD lists)")
        items = self.lists.index_select(0, batch.users)
        batch.ranked_items = items  # what an item-side term in the same model regularises (IR)
        scores = self.student.score(batch.users, items)
        return self.loss_function(scores[:, : self.k], scores[:, self.k:])
