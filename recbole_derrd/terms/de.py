"""DE (Distillation Experts): the student's representations mapped into the teacher's space."""

import torch

from recbole_derrd.distillation import DistillationExperts, tau_at_epoch
from recbole_derrd.terms.base import DistillationTerm, non_negative, positive, positive_int


class DE(DistillationTerm):
    """DE(distinct users) + 0.5 * (DE(distinct positive items) + DE(distinct negative items)).

    Selection temperature tau anneals geometrically from ``de_tau_start`` to ``de_tau_end``
    over ``de_anneal_epochs``.  The two item sets go through the item experts in one call
    (rows weighted 0.5): the same loss as two calls, with larger and fewer matrix products.
    """

    name = "DE"

    def __init__(self, context, weight, tau_start, tau_end, anneal_epochs, num_experts, threshold):
        super().__init__(weight)
        self.student, self.teacher = context.student, context.teacher
        self.tau_start, self.tau_end, self.anneal_epochs = tau_start, tau_end, anneal_epochs
        self.user_experts = DistillationExperts(
            self.student.user_dim, self.teacher.user_dim, num_experts, threshold)
        self.item_experts = DistillationExperts(
            self.student.item_dim, self.teacher.item_dim, num_experts, threshold)
        self.tau = tau_start

    @classmethod
    def from_config(cls, config, context):
        weight = non_negative(config, "de_weight")
        tau_start = positive(config, "de_tau_start")
        tau_end = positive(config, "de_tau_end")
        if tau_end > tau_start:
            raise ValueError("de_tau_end=%r must not exceed de_tau_start=%r" % (tau_end, tau_start))
        anneal_epochs = non_negative(config, "de_anneal_epochs")
        num_experts = positive_int(config, "de_num_experts")
        threshold = non_negative(config, "de_weight_threshold")
        if threshold >= 1:
            raise ValueError("de_weight_threshold=%r must be below 1" % (threshold,))
        return cls(context, weight, tau_start, tau_end, anneal_epochs, num_experts, threshold)

    def modules(self):
        return {"user_experts": self.user_experts, "item_experts": self.item_experts}

    def start_epoch(self, epoch):
        self.tau = tau_at_epoch(epoch, self.tau_start, self.tau_end, self.anneal_epochs)

    def raw_loss(self, batch):
        loss = self._part(self.user_experts, self.student.user_repr, self.teacher.user_repr, batch.users)
        item_sets = [torch.unique(items) for items in (batch.positives, batch.negatives) if items.numel()]
        if item_sets:
            items = torch.cat(item_sets)
            half = torch.full(items.shape, 0.5, device=items.device)
            loss = loss + self._part(self.item_experts, self.student.item_repr,
                                     self.teacher.item_repr, items, half)
        return loss

    def _part(self, experts, student_repr, teacher_repr, ids, row_weights=None):
        with torch.no_grad():
            target = teacher_repr(ids)
        return experts.loss(student_repr(ids), target, self.tau, row_weights)
