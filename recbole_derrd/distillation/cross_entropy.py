"""Losses and sampling weights of RCE-KD (rejuvenated cross-entropy distillation).

Zhu & Zhang, "Rejuvenating Cross-Entropy Loss in Knowledge Distillation for Recommender
Systems" (ICLR 2026, arXiv:2509.20989).  A cross-entropy between the teacher's and the student's
softmax over an item subset bounds the subset's NDCG only when the subset is *closed* under the
student's ranking (every item the student ranks above a member is a member).  The student's own
top-K is closed, but distillation wants the teacher's top-K, which is not.  RCE-KD therefore adds
two cross-entropies per user:

* over the student's top-K (closed), and
* over the teacher's top-K items outside it plus L items sampled from the student's top-M, where
  the draw favours the student positions above the teacher's items that the student ranks low
  (so that the sampled set approximates closure around them),

mixed by ``w = exp(-beta * overlap)``, overlap being the share of the teacher's top-K that the
sampled set already holds.  Definitions follow the authors' public code (their ``TSCKD`` / ``MKD``
classes).  No RecBole here: scores and item tables in, tensors out.
"""

import torch
import torch.nn.functional as F

#: the authors' fixed cap on the count that drives a position's sampling weight
CLOSURE_COUNT_CAP = 50


def rowwise_isin(values, members):
    """[R, A] ``values``, [R, B] ``members`` (non-negative ids) -> [R, A] bool: whether each
    value is among the members *of its own row*.

    One flat ``isin`` on (row, id) keys instead of an [R, A, B] comparison."""
    if values.shape[0] != members.shape[0]:
        raise ValueError("rowwise_isin: %d rows of values, %d of members" % (values.shape[0], members.shape[0]))
    span = int(max(int(values.max()) if values.numel() else 0, int(members.max()) if members.numel() else 0)) + 1
    rows = torch.arange(values.shape[0], device=values.device).unsqueeze(1) * span
    return torch.isin(values.long() + rows, members.long() + rows)


def closure_sampling_weights(student_top, teacher_top, temperature, cap=CLOSURE_COUNT_CAP):
    """[U, M] weights of the student's top-M positions for drawing the sampled set.

    Position j of a user's student ranking weighs ``exp((min(c_j, cap) + 1) / temperature)``,
    where ``c_j`` counts the teacher's top-K items that the student places at position j or
    below (within its top M): positions above many of the teacher's items are drawn more often.
    """
    hit = rowwise_isin(student_top, teacher_top)  # [U, M]: position holds a teacher top-K item
    at_or_below = hit.flip(1).cumsum(1).flip(1)
    return torch.exp((at_or_below.clamp(max=cap).double() + 1.0) / temperature)


def rank_sampling_weights(n_users, top_m, temperature):
    """[U, M] the authors' simpler option: position j (0-based) weighs exp(-(j + 1) / T)."""
    positions = torch.arange(1, top_m + 1, dtype=torch.float64)
    return torch.exp(-positions / temperature).expand(n_users, top_m)


def rce_loss(student, teacher, k, l, in_sampled, in_student_top, tau=1.0, beta=3.0):
    """RCE-KD's loss summed over users.

    Args:
        student, teacher: [U, K + L + K] scores of each user's (student's top K | L sampled items
            | teacher's top K), the student's with gradient.
        in_sampled: [U, K] bool, teacher's top-K item is among the sampled L.
        in_student_top: [U, K] bool, teacher's top-K item is in the student's top K.
        tau: softmax temperature of both models' scores.
        beta: how fast the mix moves to the closed set as the overlap grows.
    Returns:
        scalar: sum over users of (1 - w) * CE(student top K) + w * CE(sampled + rest of the
        teacher's top K), w = exp(-beta * mean(in_sampled)).
    """
    s, t = student / tau, teacher / tau
    closed = -(F.softmax(t[:, :k], 1) * F.log_softmax(s[:, :k], 1)).sum(1)
    # the teacher's items already counted (sampled, or in the student's top K) leave the second set
    keep = torch.cat([torch.ones_like(in_sampled[:, :1]).expand(-1, l), ~(in_sampled | in_student_top)], 1)
    s_rest = s[:, k:].masked_fill(~keep, -torch.inf)
    t_rest = t[:, k:].masked_fill(~keep, -torch.inf)
    log_student = F.log_softmax(s_rest, 1).masked_fill(~keep, 0.0)
    rest = -(F.softmax(t_rest, 1) * log_student).sum(1)
    weight = torch.exp(-beta * in_sampled.float().mean(1))
    return ((1.0 - weight) * closed + weight * rest).sum()
