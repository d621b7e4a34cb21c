"""The two DE-RRD distillation losses and the teacher-ranking machinery they rely on."""

from recbole_derrd.distillation.experts import DistillationExperts, gumbel_softmax, tau_at_epoch
from recbole_derrd.distillation.rrd import reference_relaxed_ranking_loss, relaxed_ranking_loss
from recbole_derrd.distillation.ranking import teacher_top_n, teacher_top_users, RRDSampler

__all__ = [
    "DistillationExperts",
    "gumbel_softmax",
    "tau_at_epoch",
    "reference_relaxed_ranking_loss",
    "relaxed_ranking_loss",
    "teacher_top_n",
    "teacher_top_users",
    "RRDSampler",
]
