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

raw loss = alpha * TD + (1 - alpha) * GA.  ``htd_rows: epoch`` computes GA, the costly part while
tau is high (every row through every expert), on each user and item about once per epoch (the
next 1/B of a per-epoch random order, scaled by batch rows / rows used: DE's ``de_rows: epoch``)
instead of on the batch's rows; the groups and the topology stay the batch's.  The defaults are
those of the authors' published example (K = 30, alpha = 0.5, weight 1e-3, the temperature from
1 to 1e-10 over the run's epochs; it ran 100).  Their code also has a group-level variant
relating prototypes to prototypes, computed entirely without gradient there; it is not offered.

Each epoch's training line in the log says how the groups were used (``epoch_summary``): the
groups that got members, the largest group's share, and the share of all entity pairs that were
same-group pairs (what the entity level costs: a few large groups make it slow, and bring it
close to the full topology that the hierarchy is meant to spare a small student).
"""

import torch

from recbole_derrd.distillation import DistillationExperts, tau_at_epoch
from recbole_derrd.distillation.topology import hierarchical_topology_loss
from recbole_derrd.terms.base import (DistillationTerm, boolean, expert_schedule, non_negative, number, one_of,
                                      positive_int)
from recbole_derrd.terms.rows import EpochSlices, stream_seed

#: ``htd_rows``: which rows the group assignment distils (see the module docstring)
HTD_ROWS = ("batch", "epoch")


class HTD(DistillationTerm):
    """Group assignment (DE's experts) plus the hierarchical topology of the teacher's space."""

    name = "HTD"
    needs_representations = True

    def __init__(self, context, weight, alpha, num_groups, tau_start, tau_end, anneal_epochs, threshold,
                 positive_pairs_only=True, rows="batch"):
        super().__init__(weight)
        self.rows, self.seed = rows, context.seed
        self.n_users, self.n_items = context.n_users, context.n_items
        self.slices = EpochSlices()
        self._generator = torch.Generator()
        self._user_rotation = self._item_rotation = None
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
        self._group_sizes = self._pair_share = self._batches = 0  # this epoch's group use (epoch_summary)

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
                   boolean(config, "htd_positive_pairs_only"), one_of(config, "htd_rows", HTD_ROWS))

    def modules(self):
        return {"htd_user_experts": self.user_experts, "htd_item_experts": self.item_experts}

    def prepare(self, context, train_matrix):
        self.slices.prepare(context)

    def start_epoch(self, epoch):
        self.tau = tau_at_epoch(epoch, self.tau_start, self.tau_end, self.anneal_epochs)
        self._group_sizes = self._pair_share = self._batches = 0
        if self.rows == "epoch":
            # one stream per (seed, epoch): the rows a batch draws survive a resume
            self._generator.manual_seed(stream_seed("htd-rows", self.seed, epoch))
            self._user_rotation = self.slices.rotation(self.n_users, self._generator, "htd_rows='epoch'")
            self._item_rotation = self.slices.rotation(self.n_items, self._generator, "htd_rows='epoch'")

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
        if self.rows == "epoch":
            assignment = (self._rotated(self.user_experts, self._user_rotation, users.numel(),
                                        self.student.user_repr, self.teacher.user_repr, users.device)
                          + self._rotated(self.item_experts, self._item_rotation, items.numel(),
                                          self.student.item_repr, self.teacher.item_repr, users.device))
        else:
            assignment = self.user_experts.loss(student_users, teacher_users, self.tau)
            if items.numel():
                assignment = assignment + self.item_experts.loss(student_items, teacher_items, self.tau)
        groups = torch.cat([self.groups(self.user_experts, teacher_users),
                            self.groups(self.item_experts, teacher_items) + self.num_groups])
        topology = hierarchical_topology_loss(torch.cat([student_users, student_items]),
                                              torch.cat([teacher_users, teacher_items]), groups,
                                              self.positive_pairs_only)
        self._note_groups(groups)
        return self.alpha * topology + (1 - self.alpha) * assignment

    def _note_groups(self, groups):
        """Count this batch's group members (users' groups first, then items') for the summary."""
        with torch.no_grad():
            sizes = torch.bincount(groups, minlength=2 * self.num_groups).double()
            share = (sizes ** 2).sum() / sizes.sum() ** 2
        self._group_sizes, self._pair_share = self._group_sizes + sizes, self._pair_share + share
        self._batches += 1

    def epoch_summary(self):
        """e.g. "HTD groups: users 12/30 (largest 41%), items 9/30 (largest 63%), same-group
        pairs 9.5%" over the epoch's batches (members counted once per batch they appear in)."""
        if not self._batches:
            return ""
        sides = []
        for side, sizes in zip(("users", "items"), self._group_sizes.cpu().split(self.num_groups)):
            total = float(sizes.sum())
            largest = float(sizes.max()) / total if total else 0.0
            sides.append("%s %d/%d (largest %.0f%%)" % (side, int((sizes > 0).sum()), self.num_groups,
                                                       100 * largest))
        return "HTD groups: %s, same-group pairs %.1f%%" % (
            ", ".join(sides), 100 * float(self._pair_share) / self._batches)

    def _rotated(self, experts, rotation, batch_rows, student_repr, teacher_repr, device):
        """The group assignment on the rotation's next ids, weighted to the batch's row count."""
        ids = rotation.next(device)
        if not batch_rows or not ids.numel():
            return torch.zeros((), device=device)
        return experts.loss_on(student_repr, teacher_repr, ids, self.tau) * (batch_rows / ids.numel())
