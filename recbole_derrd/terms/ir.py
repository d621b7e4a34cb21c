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

import torch

from recbole_derrd.distillation import RRDSampler, relaxed_ranking_loss, teacher_top_users
from recbole_derrd.distillation.ranking import check_room
from recbole_derrd.terms.rrd import RankedListsTerm

#: the IR lists' random stream, apart from RRD's under the same seed
IR_STREAM = 1


class IR(RankedListsTerm):
    """Per item, K interesting users (teacher order) above L uninteresting users."""

    name = "IR"
    prefix = "ir"

    @classmethod
    def from_config(cls, config, context):
        settings = cls.list_settings(config)
        top_n, l = settings[1], settings[3]
        # fail before the teacher is trained if some item cannot get N + L distinct users
        check_room(context.item_counts[1:], context.n_users, top_n + l, "ir_top_n + ir_l = %d" % (top_n + l),
                   lambda i: context.item_label(i + 1), rows="item", cols="user")
        return cls(context, *settings)

    def prepare(self, context, train_matrix):
        if self.sampler is None:
            top = teacher_top_users(context.teacher.all_scores, train_matrix, self.top_n, device=context.device)
            self.sampler = RRDSampler(top, train_matrix.T.tocsr(), self.k, self.l, self.temperature,
                                      mode=self.sampling, seed=context.seed, prefix="ir", sides=("item", "user"),
                                      stream=IR_STREAM)
            self.device = context.device

    def raw_loss(self, batch):
        if batch.ranked_items is not None:
            items = torch.unique(batch.ranked_items)
        else:
            items = torch.unique(torch.cat([batch.positives.reshape(-1), batch.negatives.reshape(-1)]))
        users = self.lists_of(items)
        scores = self.student.item_side_score(items, users)
        return relaxed_ranking_loss(scores[:, : self.k], scores[:, self.k:])
