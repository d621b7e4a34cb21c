"""HTD (hierarchical topology distillation; Kang et al., "Topology Distillation for Recommender
System", KDD 2021): the student learns the relations among the teacher's representations.

Per batch, over its distinct users and its distinct (positive and negative) items:

* **group assignment** (GA): per side, K experts map the student's representation into the
  teacher's space and a selection network fed the teacher's representation mixes them through a
  Gumbel-softmax whose temperature anneals, exactly DE's machinery; its loss, the squared
  distance to the teacher's representation summed over the entities, trains both.  Each
  entity's *group* is the selection network's choice (its argmax), users and items apart;
* **topology** (TD): :func:`recbole_derrd.distillation.topology.hierarchical_topology_loss` over
  the users and items together: same-group pairs (entity level) and every entity against every
  group prototype (group level), cosine similarities of the student's own representations
  against the teacher's.

raw loss = alpha * TD + (1 - alpha) * GA.  The defaults are those of the authors' published
example (K = 30, alpha = 0.5, weight 1e-3, the temperature from 1 to 1e-10 over the run's
epochs; it ran 100).  Their code also has a group-level variant relating prototypes to
prototypes, computed entirely without gradient there; it is not offered.
"""

import torch

from recbole_derrd.distillation import DistillationExperts, tau_at_epoch
from recbole_derrd.distillation.topology import hierarchical_topology_loss
from recbole_derrd.terms.base import (DistillationTerm, boolean, expert_schedule, non_negative, number,
                                      positive_int)


class HTD(DistillationTerm):
    """Group assignment (DE's experts) plus the hierarchical topology of the teacher's space."""

    name = "HTD"
    needs_representations = True

    def __init__(self, context, weight, alpha, num_groups, tau_start, tau_end, anneal_epochs, threshold,
                 positive_pairs_only=True):
        super().__init__(weight)
        self.student, self.teacher = context.student, context.teacher
        if self.student.user_dim != self.student.item_dim or self.teacher.user_dim != self.teacher.item_dim:
            raise ValueError(
                "HTD relates users and items in one space: it needs user and item representations of "
                "one size on each side (student %s/%s, teacher %s/%s)" % (
                    self.student.user_dim, self.student.item_dim, self.teacher.user_dim, self.teacher.item_dim))
        self.alpha, self.num_groups = alpha, num_groups
        self.tau_start, self.tau_end, self.anneal_epochs = tau_start, tau_end, anneal_epochs
        self.positive_pairs_only = positive_pairs_only
        self.user_experts = DistillationExperts(self.student.user_dim, self.teacher.user_dim, num_groups, threshold)
        self.item_experts = DistillationExperts(self.student.item_dim, self.teacher.item_dim, num_groups, threshold)
        self.tau = tau_start

    @classmethod
    def from_config(cls, config, context):
        weight = non_negative(config, "htd_weight")
        alpha = number(config, "htd_alpha")
        if not 0 <= alpha <= 1:
            raise ValueError("htd_alpha=%r must be in [0, 1] (the topology's share; 1 - alpha is the "
                             "group assignment's)" % (alpha,))
        num_groups = positive_int(config, "htd_num_groups")
        tau_start, tau_end, anneal_epochs, threshold = expert_schedule(config, "htd", "htd_weight_threshold")
        return cls(context, weight, alpha, num_groups, tau_start, tau_end, anneal_epochs, threshold,
                   boolean(config, "htd_positive_pairs_only"))

    def modules(self):
        return {"htd_user_experts": self.user_experts, "htd_item_experts": self.item_experts}

    def start_epoch(self, epoch):
        self.tau = tau_at_epoch(epoch, self.tau_start, self.tau_end, self.anneal_epochs)

    def groups(self, experts, teacher_repr):
        """Each entity's group: the selection network's choice for its teacher representation."""
        if experts.selection is None:
            return teacher_repr.new_zeros(len(teacher_repr), dtype=torch.long)
        with torch.no_grad():
            return experts.selection(teacher_repr).argmax(-1)

    def raw_loss(self, batch):
        users = batch.users
        items = torch.unique(torch.cat([batch.positives.reshape(-1), batch.negatives.reshape(-1)]))
        with torch.no_grad():
            teacher_users, teacher_items = self.teacher.user_repr(users), self.teacher.item_repr(items)
        student_users, student_items = self.student.user_repr(users), self.student.item_repr(items)
        assignment = self.user_experts.loss(student_users, teacher_users, self.tau)
        if items.numel():
            assignment = assignment + self.item_experts.loss(student_items, teacher_items, self.tau)
        groups = torch.cat([self.groups(self.user_experts, teacher_users),
                            self.groups(self.item_experts, teacher_items) + self.num_groups])
        topology = hierarchical_topology_loss(torch.cat([student_users, student_items]),
                                              torch.cat([teacher_users, teacher_items]), groups,
                                              self.positive_pairs_only)
        return self.alpha * topology + (1 - self.alpha) * assignment
