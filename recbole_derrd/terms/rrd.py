"""RRD (Relaxed Ranking Distillation): the teacher's top items, in its order, above sampled ones.

General backbones: the teacher's top-N per user, computed once; lists drawn per epoch.
Sequential backbones: the query is a batch's prefix, so the lists are drawn per batch
(:class:`~recbole_derrd.distillation.query_lists.QueryListSampler`) from the teacher's top-N of
each prefix, the prefix's target always excluded and, with ``rrd_exclude_prefix_items``, its own
items too: read from the model's prefix table (computed once before training, when it fits
``prefix_cache_mib``), else from the teacher's scores of each batch.

:class:`RankedListsTerm` is what RRD and the item-side IR share: the ``<prefix>_*`` keys of a
top-N list term and the per-epoch [rows, K + L] list table drawn by an :class:`RRDSampler`.
"""

import numpy as np
import torch

from recbole_derrd.distillation import RRDSampler, reference_relaxed_ranking_loss, relaxed_ranking_loss
from recbole_derrd.distillation.query_lists import QueryListSampler
from recbole_derrd.terms.base import (KD_IMPLEMENTATIONS, DistillationTerm, boolean, check_room, non_negative,
                                      non_negative_int, one_of, positive, positive_int)
from recbole_derrd.terms.rows import stream_seed, uniform_subset

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
    rank the interesting ones in the teacher's order above the uninteresting ones.

    The paper ranks the lists of every distinct user of a batch, so a user is distilled again in
    every batch that holds one of its interactions (about its interaction count per epoch, up to
    the batches per epoch): RRD's cost grows with interactions per user.  ``rrd_max_rows: k``
    (general backbones) ranks a uniform sample without replacement of at most k of the batch's
    distinct users, the loss scaled by (distinct users / kept users): the same batch loss in
    expectation, as ``de_max_rows`` is for DE.
    """

    name = "RRD"
    prefix = "rrd"
    sequential_queries = True

    def __init__(self, context, weight, top_n, k, l, temperature, sampling, reference=False, max_rows=0):
        super().__init__(context, weight, top_n, k, l, temperature, sampling)
        self.max_rows = max_rows
        self.loss_function = reference_relaxed_ranking_loss if reference else relaxed_ranking_loss
        self.teacher = context.teacher
        self.context = context
        self.sequential = context.sequential
        self.seed = context.seed
        self._generator = torch.Generator()

    @classmethod
    def from_config(cls, config, context):
        settings = cls.list_settings(config)
        top_n, l = settings[1], settings[3]
        reference = one_of(config, "kd_implementation", KD_IMPLEMENTATIONS) == "reference"
        max_rows = non_negative_int(config, "rrd_max_rows")
        if max_rows and context.sequential:
            raise ValueError("rrd_max_rows=%r applies to general backbones (a sequential batch's rows are "
                             "its prefixes, each in one batch per epoch already)" % (max_rows,))
        if max_rows and reference:
            raise ValueError("kd_implementation='reference' computes the paper's RRD rows: it needs "
                             "rrd_max_rows=0 (got %r)" % (max_rows,))
        if context.sequential:
            context.exclude_prefix_items = boolean(config, "rrd_exclude_prefix_items")
            excluded = 1 + (context.max_prefix_length if context.exclude_prefix_items else 0)
            room = context.n_items - 1 - excluded
            if room < top_n + l:
                raise ValueError("rrd_top_n + rrd_l = %d needs that many items outside a prefix's excluded "
                                 "ones, but the catalogue leaves %d (n_items - 1 - %d excluded)"
                                 % (top_n + l, room, excluded))
        else:
            # Fail before the teacher is trained if some user cannot get N + L distinct items.
            check_room(context, top_n + l, "rrd_top_n + rrd_l = %d" % (top_n + l))
        return cls(context, *settings, reference, max_rows)

    def prepare(self, context, train_matrix):
        if self.sampler is not None:
            return
        self.device = context.device
        if self.sequential:
            self.sampler = QueryListSampler(context.n_items, self.top_n, self.k, self.l, self.temperature,
                                            mode=self.sampling)
            return
        top = context.teacher_ranking(train_matrix, self.top_n)
        self.sampler = RRDSampler(top, train_matrix, self.k, self.l, self.temperature,
                                  mode=self.sampling, seed=context.seed)

    def start_epoch(self, epoch):
        if not self.sequential:
            # one stream per (seed, epoch) for rrd_max_rows' draws: a resumed run draws the same
            self._generator.manual_seed(stream_seed("rrd-rows", self.seed, epoch))
            return super().start_epoch(epoch)
        if self.sampler is None:
            raise RuntimeError("RRD must be trained with its DistillationTrainer (teacher not prepared)")
        # one stream per (seed, epoch), as the general lists: a resumed run draws the same
        self._generator.manual_seed((int(self.seed) * 1000003 + int(epoch)) % (2 ** 63) + 1)
        self.lists = True

    def prefix_top(self, rows, excluded):
        """[R, N] the teacher's top-N of the bound batch's ``rows`` (for the prefix table)."""
        return self.sampler.top_of(self.teacher.all_scores, rows, excluded)

    def lists_of(self, rows, batch=None):
        if not self.sequential:
            return super().lists_of(rows)
        if self.lists is None:
            raise RuntimeError("RRD must be trained with its DistillationTrainer (no epoch started)")
        table = self.context.prefix_table
        if table is None or table.top is None:
            return self.sampler.draw(self.teacher.all_scores, rows, batch.excluded, self._generator)
        found, position = table.positions(self.context.prefix_keys(batch.interaction)[rows.cpu()])
        top = table.top[position].to(rows.device).long()
        if not bool(found.all()):  # a prefix the training set does not hold: score it now
            missing = torch.nonzero(~found).view(-1).to(rows.device)
            top[missing] = self.prefix_top(rows[missing], batch.excluded[missing])
        return self.sampler.lists(top, batch.excluded, self._generator)

    def raw_loss(self, batch):
        users = batch.users
        if self.max_rows:
            users = uniform_subset(users, self.max_rows, self._generator)
        items = self.lists_of(users, batch)
        batch.ranked_items = items  # what an item-side term in the same model regularises (IR)
        scores = self.student.score(users, items)
        loss = self.loss_function(scores[:, : self.k], scores[:, self.k:])
        if users.numel() == batch.users.numel():
            return loss
        return loss * (batch.users.numel() / users.numel())
