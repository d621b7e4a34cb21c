"""RCE (RCE-KD, rejuvenated cross-entropy distillation; Zhu & Zhang, ICLR 2026).

Per user: the teacher's top-K unobserved items (computed once), and per epoch the student's own
top-M unobserved items (scored in blocks, the student in eval mode, no gradient), of which the
first K form the closed set and L positions are drawn without replacement as the sampled set
(``rce_sampling``: ``collaborative``, the paper's draw steered by where the student ranks the
teacher's items; ``rank``, the authors' simpler rank-discounted draw).  The batch loss is
:func:`recbole_derrd.distillation.cross_entropy.rce_loss` over the batch's distinct users.

Deviation from the authors' code, stated: both rankings here leave out the user's training
items (as every ranking term of the plugin does); theirs rank the whole catalogue.  Defaults:
their CiteULike BPR settings (K 50, L 50, M 200, T 10, tau 1, beta 3, weight 500; with
``kd_reduction: per_row`` the balance against RecBole's mean BPR loss is theirs against a summed
BPR loss).
"""

import torch

from recbole_derrd.distillation import teacher_top_n
from recbole_derrd.distillation.cross_entropy import (closure_sampling_weights, rank_sampling_weights, rce_loss,
                                                      rowwise_isin)
from recbole_derrd.terms.base import DistillationTerm, check_room, non_negative, one_of, positive, positive_int

RCE_SAMPLING = ("collaborative", "rank")
#: the sampled sets' random stream, apart from the other terms' under the same seed
RCE_STREAM = 7
#: users per block when the teacher scores the epoch's lists (bounds the gathered [users, X, d] rows)
TEACHER_BLOCK_USERS = 256


class RCE(DistillationTerm):
    """Cross-entropy on the student's top K and on the teacher's top K completed by a sample."""

    name = "RCE"

    def __init__(self, context, weight, k, l, top_m, temperature, tau, beta, sampling):
        super().__init__(weight)
        self.student, self.teacher = context.student, context.teacher
        self.seed, self.n_users = context.seed, context.n_users
        self.k, self.l, self.top_m = k, l, top_m
        self.temperature, self.tau, self.beta, self.sampling = temperature, tau, beta, sampling
        self.teacher_top = None  # [n_users, K] the teacher's top-K, fixed
        self.train_matrix = None
        self.device = None
        self.items = None  # [n_users, K + L + K] this epoch's (student top K | sampled | teacher top K)
        self.in_sampled = self.in_student_top = None  # [n_users, K] bool
        self.teacher_scores = None  # [n_users, K + L + K] the frozen teacher's scores of ``items``

    @classmethod
    def from_config(cls, config, context):
        weight = non_negative(config, "rce_weight")
        k, l, top_m = (positive_int(config, "rce_" + key) for key in ("k", "l", "top_m"))
        for key, value in (("rce_k", k), ("rce_l", l)):
            if value > top_m:
                raise ValueError("%s=%d must not exceed rce_top_m=%d (both are drawn from the student's "
                                 "top-M)" % (key, value, top_m))
        temperature = positive(config, "rce_temperature")
        tau = positive(config, "rce_tau")
        beta = non_negative(config, "rce_beta")
        sampling = one_of(config, "rce_sampling", RCE_SAMPLING)
        # fail before the teacher is trained if some user cannot get M distinct unobserved items
        check_room(context, top_m, "rce_top_m = %d" % top_m)
        return cls(context, weight, k, l, top_m, temperature, tau, beta, sampling)

    def prepare(self, context, train_matrix):
        if self.teacher_top is None:
            self.device = context.device
            self.train_matrix = train_matrix
            self.teacher_top = torch.as_tensor(context.teacher_ranking(train_matrix, self.k), device=self.device)

    def student_ranking(self):
        """[n_users, M] the student's current top-M unobserved items (eval mode, no gradient)."""
        model = self.student.model
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                top = teacher_top_n(self.student.all_scores, self.train_matrix, self.top_m, device=self.device)
        finally:
            model.train(was_training)
        return torch.as_tensor(top, device=self.device)

    def start_epoch(self, epoch):
        if self.teacher_top is None:
            raise RuntimeError("RCE must be trained with its DistillationTrainer (teacher not prepared)")
        student_top = self.student_ranking()
        if self.sampling == "collaborative":
            weights = closure_sampling_weights(student_top, self.teacher_top, self.temperature)
        else:
            weights = rank_sampling_weights(self.n_users, self.top_m, self.temperature)
        # one stream per (seed, epoch): a resumed run draws the same sets from the same student
        stream = (int(self.seed) * 1000003 + int(epoch)) * 10 + RCE_STREAM
        generator = torch.Generator().manual_seed(stream % (2 ** 63))
        positions = torch.multinomial(weights.cpu(), self.l, replacement=False, generator=generator)
        sampled = torch.gather(student_top, 1, positions.to(student_top.device))
        own = student_top[:, : self.k]
        self.items = torch.cat([own, sampled, self.teacher_top], 1)
        self.in_sampled = rowwise_isin(self.teacher_top, sampled)
        self.in_student_top = rowwise_isin(self.teacher_top, own)
        self.teacher_scores = self.score_lists(self.items)

    @torch.no_grad()
    def score_lists(self, items):
        """The frozen teacher's scores of every user's epoch lists, once per epoch.

        A user's lists are fixed for the epoch and the teacher is frozen, yet the lists come back in
        every batch that holds one of the user's training interactions (about 20 per epoch on
        CiteULike); scored per batch, the teacher's wide dot products were most of an RCE epoch.
        """
        blocks = []
        for start in range(0, items.shape[0], TEACHER_BLOCK_USERS):
            users = torch.arange(start, min(start + TEACHER_BLOCK_USERS, items.shape[0]), device=items.device)
            blocks.append(self.teacher.score(users, items[users]))
        return torch.cat(blocks)

    def raw_loss(self, batch):
        if self.items is None:
            raise RuntimeError("RCE must be trained with its DistillationTrainer (no epoch started)")
        users = batch.users
        items = self.items.index_select(0, users)
        student = self.student.score(users, items)
        teacher = self.teacher_scores.index_select(0, users)
        return rce_loss(student, teacher, self.k, self.l, self.in_sampled.index_select(0, users),
                        self.in_student_top.index_select(0, users), self.tau, self.beta)
