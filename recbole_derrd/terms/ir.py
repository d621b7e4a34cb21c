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
negative items.
"""

import numpy as np
import torch

from recbole_derrd.distillation import RRDSampler, relaxed_ranking_loss, teacher_top_users
from recbole_derrd.distillation.ranking import check_room
from recbole_derrd.terms.base import DistillationTerm, non_negative, one_of, positive, positive_int
from recbole_derrd.terms.rrd import RRD_SAMPLING

#: the IR lists' random stream, apart from RRD's under the same seed
IR_STREAM = 1


class IR(DistillationTerm):
    """Per item, K interesting users (teacher order) above L uninteresting users."""

    name = "IR"

    def __init__(self, context, weight, top_n, k, l, temperature, sampling):
        super().__init__(weight)
        self.student = context.student
        self.top_n, self.k, self.l = top_n, k, l
        self.temperature, self.sampling = temperature, sampling
        self.sampler = None
        self.lists = None

    @classmethod
    def from_config(cls, config, context):
        weight = non_negative(config, "ir_weight")
        top_n = positive_int(config, "ir_top_n")
        k = positive_int(config, "ir_k")
        l = positive_int(config, "ir_l")
        temperature = positive(config, "ir_temperature")
        sampling = one_of(config, "ir_sampling", RRD_SAMPLING)
        if k > top_n:
            raise ValueError("ir_k=%d must not exceed ir_top_n=%d" % (k, top_n))
        # fail before the teacher is trained if some item cannot get N + L distinct users
        if context.item_counts is not None:
            check_room(context.item_counts[1:], context.n_users, top_n + l, "ir_top_n + ir_l = %d" % (top_n + l),
                       lambda i: context.item_label(i + 1), rows="item", cols="user")
        return cls(context, weight, top_n, k, l, temperature, sampling)

    def prepare(self, context, train_matrix):
        if self.sampler is None:
            top = teacher_top_users(context.teacher.all_scores, train_matrix, self.top_n, device=context.device)
            self.sampler = RRDSampler(top, train_matrix.T.tocsr(), self.k, self.l, self.temperature,
                                      mode=self.sampling, seed=context.seed, prefix="ir", stream=IR_STREAM)
            self.device = context.device

    def start_epoch(self, epoch):
        if self.sampler is None:
            raise RuntimeError("IR must be trained with its DistillationTrainer (teacher not prepared)")
        interesting, uninteresting = self.sampler.sample(epoch)
        self.lists = torch.as_tensor(np.concatenate([interesting, uninteresting], 1), device=self.device)

    def raw_loss(self, batch):
        if self.lists is None:
            raise RuntimeError("IR must be trained with its DistillationTrainer (no IR lists)")
        ranked = getattr(batch, "ranked_items", None)
        if ranked is not None:
            items = torch.unique(ranked)
        else:
            items = torch.unique(torch.cat([batch.positives.reshape(-1), batch.negatives.reshape(-1)]))
        users = self.lists.index_select(0, items)
        scores = self.student.item_side_score(items, users)
        return relaxed_ranking_loss(scores[:, : self.k], scores[:, self.k:])
