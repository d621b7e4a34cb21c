"""DE (Distillation Experts): the student's representations mapped into the teacher's space."""

import torch

from recbole_derrd.distillation import DistillationExperts, tau_at_epoch
from recbole_derrd.terms.base import (KD_IMPLEMENTATIONS, DistillationTerm, expert_schedule, non_negative,
                                      non_negative_int, one_of, positive_int)
from recbole_derrd.terms.rows import EpochSlices, uniform_subset

#: ``de_rows``: which rows a batch distils (see :class:`DE`).
DE_ROWS = ("batch", "epoch")


class DE(DistillationTerm):
    """DE(distinct users) + 0.5 * (DE(distinct positive items) + DE(distinct negative items)).

    Selection temperature tau anneals geometrically from ``de_tau_start`` to ``de_tau_end``
    over ``de_anneal_epochs``.  The two item sets go through the item experts in one call
    (rows weighted 0.5): the same loss as two calls, with larger and fewer matrix products.

    DE's cost is rows x experts, and with the paper's rows (``de_rows: batch``) a user is
    distilled again in every batch that holds one of its interactions.  Two cheaper estimates of
    the same batch loss, each weighted so that its expectation over the rows drawn is the
    paper's (scaled by distinct rows / rows used):

    * ``de_max_rows: k`` -- at most k rows per side (users; items), a uniform sample without
      replacement of the batch's distinct users and of its item rows;
    * ``de_rows: epoch`` -- each epoch a random order of all users and all items, and each
      batch distils the next 1/B of each (B: batches per epoch), so every entity is distilled
      about once per epoch, whichever batches it appears in.

    The rows drawn depend only on (seed, epoch, batch number): a resumed run draws the same.

    ``de_every: k`` distils DE on one batch in k (the epoch's 1st, (k+1)-th, ...), its loss
    times k and, under ``de_rows: epoch``, its rows k times as many (each entity still about once
    per epoch), so the epoch's expected DE gradient is unchanged.  What it saves is the per-step
    work that does not depend on the rows: the backward's full-size gradients of the experts'
    weights and the optimizer's update of them (about 1.5M weights for BPR 20 -> 200), skipped
    on the other batches (their gradients stay None).  That work dominates when an epoch has
    many batches and each holds few DE rows (MovieLens-1M-shaped data under ``de_rows: epoch``:
    ~580 batches of ~16 rows).  The experts get k times fewer, larger optimizer steps.

    Sequential backbones: the user side is the batch's prefixes (the student's sequence
    representation against the teacher's for the same prefix, see
    :mod:`recbole_derrd.sequential_backbones`), the item side the item embeddings.

    ``kd_implementation: reference`` computes the paper's rows the straightforward way the
    official code does (three calls per batch, every expert densely at every tau, autograd), to
    measure what the fast paths save; the loss is the same.
    """

    name = "DE"
    needs_representations = True
    sequential_queries = True

    def __init__(self, context, weight, tau_start, tau_end, anneal_epochs, num_experts, threshold,
                 rows="batch", max_rows=0, reference=False, every=1):
        super().__init__(weight)
        self.every = every
        self._step = 0
        self.reference = reference
        self.student, self.teacher = context.student, context.teacher
        self.tau_start, self.tau_end, self.anneal_epochs = tau_start, tau_end, anneal_epochs
        self.rows, self.max_rows = rows, max_rows
        self.seed = context.seed
        self.n_users, self.n_items = context.n_users, context.n_items
        # sequential backbones: the query rows are the batch's prefixes, each in one batch per
        # epoch already, so only the item side rotates under de_rows='epoch'
        self.sequential = context.sequential
        self.user_experts = DistillationExperts(
            self.student.user_dim, self.teacher.user_dim, num_experts, threshold)
        self.item_experts = DistillationExperts(
            self.student.item_dim, self.teacher.item_dim, num_experts, threshold)
        self.tau = tau_start
        self.slices = EpochSlices()
        self._generator = torch.Generator()
        self._user_rotation = self._item_rotation = None

    @classmethod
    def from_config(cls, config, context):
        weight = non_negative(config, "de_weight")
        tau_start, tau_end, anneal_epochs, threshold = expert_schedule(config, "de", "de_weight_threshold")
        num_experts = positive_int(config, "de_num_experts")
        rows = one_of(config, "de_rows", DE_ROWS)
        max_rows = non_negative_int(config, "de_max_rows")
        if rows == "epoch" and max_rows:
            raise ValueError("de_max_rows=%r applies to de_rows='batch' only (de_rows='epoch' already "
                             "distils about one row per entity per epoch)" % (max_rows,))
        every = positive_int(config, "de_every")
        reference = one_of(config, "kd_implementation", KD_IMPLEMENTATIONS) == "reference"
        if reference and (rows != "batch" or max_rows or every != 1):
            raise ValueError("kd_implementation='reference' computes the paper's DE rows: it needs "
                             "de_rows='batch', de_max_rows=0 and de_every=1 (got %r, %r and %r)"
                             % (rows, max_rows, every))
        return cls(context, weight, tau_start, tau_end, anneal_epochs, num_experts, threshold, rows, max_rows,
                   reference, every)

    def modules(self):
        return {"user_experts": self.user_experts, "item_experts": self.item_experts}

    def prepare(self, context, train_matrix):
        self.slices.prepare(context)

    def start_epoch(self, epoch):
        self.tau = tau_at_epoch(epoch, self.tau_start, self.tau_end, self.anneal_epochs)
        # one stream per (seed, epoch): the rows a batch draws survive a resume
        self._generator.manual_seed((int(self.seed) * 1000003 + int(epoch)) % (2 ** 63))
        self._step = 0
        if self.rows == "epoch":
            # one slice of the epoch's order per distilling batch
            self._user_rotation = (None if self.sequential else
                                   self.slices.rotation(self.n_users, self._generator, "de_rows='epoch'", self.every))
            self._item_rotation = self.slices.rotation(self.n_items, self._generator, "de_rows='epoch'", self.every)

    def raw_loss(self, batch):
        if self.reference:
            return self._reference_loss(batch)
        users = batch.users
        step, self._step = self._step, self._step + 1
        if step % self.every:
            return torch.zeros((), device=users.device)
        items = torch.cat([torch.unique(i) for i in (batch.positives, batch.negatives) if i.numel()]
                          or [users.new_empty(0)])
        # what the paper's rows weigh: 1 per distinct user, 0.5 per distinct positive / negative item
        # (times de_every: this batch stands for the k batches of its turn)
        user_mass, item_mass = float(users.numel() * self.every), 0.5 * items.numel() * self.every
        if self.rows == "epoch":
            if self._user_rotation is not None:
                users = self._user_rotation.next(users.device)
            items = self._item_rotation.next(items.device)
        elif self.max_rows:
            users = uniform_subset(users, self.max_rows, self._generator)
            items = uniform_subset(items, self.max_rows, self._generator)
        loss = self._part(self.user_experts, self.student.user_repr, self.teacher.user_repr, users,
                          user_mass / max(users.numel(), 1))
        if items.numel() and item_mass:
            loss = loss + self._part(self.item_experts, self.student.item_repr, self.teacher.item_repr,
                                     items, item_mass / items.numel())
        return loss

    def _reference_loss(self, batch):
        loss = self._part(self.user_experts, self.student.user_repr, self.teacher.user_repr, batch.users, 1)
        for items in (batch.positives, batch.negatives):
            if items.numel():
                loss = loss + self._part(self.item_experts, self.student.item_repr, self.teacher.item_repr,
                                         torch.unique(items), 0.5)
        return loss

    def _part(self, experts, student_repr, teacher_repr, ids, row_weight):
        loss = experts.loss_on(student_repr, teacher_repr, ids, self.tau, "reference" if self.reference else "auto")
        return loss if row_weight == 1 else loss * row_weight
