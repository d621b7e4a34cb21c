"""RRD (Relaxed Ranking Distillation): the teacher's top items, in its order, above sampled ones.

:class:`RankedListsTerm` is what RRD and the item-side IR share: the ``<prefix>_*`` keys of a
top-N list term and the per-epoch [rows, K + L] list table drawn by an :class:`RRDSampler`.
"""

import numpy as np
import torch

from recbole_derrd.distillation import RRDSampler, reference_relaxed_ranking_loss, relaxed_ranking_loss
from recbole_derrd.terms.base import (KD_IMPLEMENTATIONS, DistillationTerm, check_room, non_negative, one_of,
                                      positive, positive_int)

RRD_SAMPLING = ("sample", "top")


class RankedListsTerm(DistillationTerm):
    """A term that ranks, per row (user or item), K interesting entries drawn from the teacher's
    top-N above L uninteresting ones, with fresh lists every epoch."""

    #: key prefix (``rrd``, ``ir``)
    prefix = None

    def __init__(self, context, weight, top_n, k, l, temperature, sampling):
        super().__init__(weight)
        self.student = context.student
        self.top_n, self.k, self.l = top_n, k, l
        self.temperature, self.sampling = temperature, sampling
        self.sampler = None
        self.lists = None

    @classmethod
    def list_settings(cls, config):
        """(weight, top_n, k, l, temperature, sampling) read and checked from the prefixed keys."""
        p = cls.prefix
        weight = non_negative(config, p + "_weight")
        top_n = positive_int(config, p + "_top_n")
        k = positive_int(config, p + "_k")
        l = positive_int(config, p + "_l")
        temperature = positive(config, p + "_temperature")
        sampling = one_of(config, p + "_sampling", RRD_SAMPLING)
        if k > top_n:
            raise ValueError("%s_k=%d must not exceed %s_top_n=%d" % (p, k, p, top_n))
        return weight, top_n, k, l, temperature, sampling

    def start_epoch(self, epoch):
        if self.sampler is None:
            raise RuntimeError("%s must be trained with its DistillationTrainer (teacher not prepared)" % self.name)
        interesting, uninteresting = self.sampler.sample(epoch)
        # One [rows, K + L] table (K interesting, then L uninteresting entries per row): a
        # batch's lists are then one index_select instead of two advanced indexings and a cat.
        self.lists = torch.as_tensor(np.concatenate([interesting, uninteresting], 1), device=self.device)

    def lists_of(self, rows):
        if self.lists is None:
            raise RuntimeError("%s must be trained with its DistillationTrainer (no %s lists)" % (self.name, self.name))
        return self.lists.index_select(0, rows)


class RRD(RankedListsTerm):
    """Per user and epoch, K interesting items drawn from the teacher's top-N (rank-discounted
    with temperature T, or its top K) and L uninteresting items from the rest; the student must
    rank the interesting ones in the teacher's order above the uninteresting ones."""

    name = "RRD"
    prefix = "rrd"

    def __init__(self, context, weight, top_n, k, l, temperature, sampling, reference=False):
        super().__init__(context, weight, top_n, k, l, temperature, sampling)
        self.loss_function = reference_relaxed_ranking_loss if reference else relaxed_ranking_loss

    @classmethod
    def from_config(cls, config, context):
        settings = cls.list_settings(config)
        top_n, l = settings[1], settings[3]
        # Fail before the teacher is trained if some user cannot get N + L distinct items.
        check_room(context, top_n + l, "rrd_top_n + rrd_l = %d" % (top_n + l))
        reference = one_of(config, "kd_implementation", KD_IMPLEMENTATIONS) == "reference"
        return cls(context, *settings, reference)

    def prepare(self, context, train_matrix):
        if self.sampler is None:
            top = context.teacher_ranking(train_matrix, self.top_n)
            self.sampler = RRDSampler(top, train_matrix, self.k, self.l, self.temperature,
                                      mode=self.sampling, seed=context.seed)
            self.device = context.device

    def raw_loss(self, batch):
        items = self.lists_of(batch.users)
        batch.ranked_items = items  # what an item-side term in the same model regularises (IR)
        scores = self.student.score(batch.users, items)
        return self.loss_function(scores[:, : self.k], scores[:, self.k:])
