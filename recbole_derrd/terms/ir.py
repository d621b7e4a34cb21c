"""IR (item-side ranking regularizer): the teacher's ranking of users for each item.

Kang et al., "Item-side ranking regularized distillation for recommender system" (Information
Sciences, 2021): RRD teaches each user the teacher's ranking of items; IR adds the transposed
view, teaching each item the teacher's ranking of users, which regularises the user-side
distillation.  Per item and epoch, K interesting users drawn from the teacher's top-N users of
that item (rank-discounted with temperature T, or its top K) and L uninteresting users from the
rest (neither its training users nor its top-N); the student must rank the interesting users
in the teacher's order above the uninteresting ones (the relaxed ranking loss of RRD).

Which items a batch regularises: with RRD in the same model (IR-RRD), the distinct items of the
batch users' RRD lists, as in the authors' code; alone, the batch's distinct positive and
negative items.  Those sets hold most of the catalogue in every batch, so IR's cost is about
(batches per epoch) x (items) lists per epoch.  ``ir_max_rows`` and ``ir_rows: epoch`` are
cheaper estimates of the same batch loss, as DE's (:mod:`recbole_derrd.terms.rows`).
"""

import torch

from recbole_derrd.distillation import RRDSampler, relaxed_ranking_loss, teacher_top_users
from recbole_derrd.distillation.ranking import check_room
from recbole_derrd.terms.base import non_negative_int, one_of
from recbole_derrd.terms.rows import EpochSlices, stream_seed, uniform_subset
from recbole_derrd.terms.rrd import RankedListsTerm

#: the IR lists' random stream, apart from RRD's under the same seed
IR_STREAM = 1
#: ``ir_rows``: which items a batch regularises (see :class:`IR`)
IR_ROWS = ("batch", "epoch")


class IR(RankedListsTerm):
    """Per item, K interesting users (teacher order) above L uninteresting users.

    The items of a batch (the authors' rows, ``ir_rows: batch``), or a cheaper estimate of their
    loss, scaled by (the batch's items / items used): ``ir_max_rows: k``, a uniform sample of at
    most k of them; ``ir_rows: epoch``, the next 1/B of a per-epoch random order of all items, so
    each item is regularised about once per epoch.
    """

    name = "IR"
    prefix = "ir"

    def __init__(self, context, weight, top_n, k, l, temperature, sampling, rows="batch", max_rows=0):
        super().__init__(context, weight, top_n, k, l, temperature, sampling)
        self.rows, self.max_rows = rows, max_rows
        self.seed, self.n_items = context.seed, context.n_items
        self.slices = EpochSlices()
        self._generator = torch.Generator()
        self._rotation = None

    @classmethod
    def from_config(cls, config, context):
        settings = cls.list_settings(config)
        top_n, l = settings[1], settings[3]
        rows = one_of(config, "ir_rows", IR_ROWS)
        max_rows = non_negative_int(config, "ir_max_rows")
        if rows == "epoch" and max_rows:
            raise ValueError("ir_max_rows=%r applies to ir_rows='batch' only (ir_rows='epoch' already "
                             "regularises about one list per item per epoch)" % (max_rows,))
        # fail before the teacher is trained if some item cannot get N + L distinct users
        check_room(context.item_counts[1:], context.n_users, top_n + l, "ir_top_n + ir_l = %d" % (top_n + l),
                   lambda i: context.item_label(i + 1), rows="item", cols="user")
        return cls(context, *settings, rows=rows, max_rows=max_rows)

    def prepare(self, context, train_matrix):
        self.slices.prepare(context)
        if self.sampler is None:
            top = teacher_top_users(context.teacher.all_scores, train_matrix, self.top_n, device=context.device)
            self.sampler = RRDSampler(top, train_matrix.T.tocsr(), self.k, self.l, self.temperature,
                                      mode=self.sampling, seed=context.seed, prefix="ir", sides=("item", "user"),
                                      stream=IR_STREAM)
            self.device = context.device

    def start_epoch(self, epoch):
        super().start_epoch(epoch)
        # one stream per (seed, epoch): the items a batch draws survive a resume
        self._generator.manual_seed(stream_seed("ir-rows", self.seed, epoch))
        if self.rows == "epoch":
            self._rotation = self.slices.rotation(self.n_items, self._generator, "ir_rows='epoch'")

    def raw_loss(self, batch):
        if batch.ranked_items is not None:
            items = torch.unique(batch.ranked_items)
        else:
            items = torch.unique(torch.cat([batch.positives.reshape(-1), batch.negatives.reshape(-1)]))
        batch_items = items.numel()  # what the authors' rows weigh: one list per distinct item
        if self.rows == "epoch":
            items = self._rotation.next(items.device)
        elif self.max_rows:
            items = uniform_subset(items, self.max_rows, self._generator)
        users = self.lists_of(items)
        scores = self.student.item_side_score(items, users)
        loss = relaxed_ranking_loss(scores[:, : self.k], scores[:, self.k:])
        return loss if items.numel() == batch_items else loss * (batch_items / max(items.numel(), 1))
