"""RRD — Relaxed Ranking Distillation (Kang et al., CIKM 2020, Sec. 3.2).

The student must rank a user's K "interesting" items in the teacher's order and above the L
"uninteresting" ones, whose order among themselves is ignored (a relaxed Plackett-Luce
likelihood).  Evaluated stably so scores of any magnitude stay finite.
"""

import torch


def relaxed_ranking_loss(interesting, uninteresting):
    """-sum_u sum_k [ s_k - log( sum_{i>=k} exp(s_i) + sum_j exp(u_j) ) ].

    Args:
        interesting: [U, K] student scores of the interesting items, in teacher order.
        uninteresting: [U, L] student scores of the uninteresting items.
    Returns:
        scalar tensor, summed over users and positions.
    """
    # Fast path: shift every row by its maximum and take exp / reverse cumsum / log in float64
    # (torch's logcumsumexp is several times slower on CPU). The shifted sums are >= 1 up to
    # the row maximum's position; only when a later suffix falls below ~1e-308 (score spreads
    # beyond ~700) does the log-cumsum-exp path below take over.
    dtype = interesting.dtype
    inter, unint = interesting.double(), uninteresting.double()
    shift = torch.maximum(inter.max(dim=-1, keepdim=True).values,
                          unint.max(dim=-1, keepdim=True).values).detach()
    inter, unint = inter - shift, unint - shift
    suffix = inter.exp().flip(-1).cumsum(-1).flip(-1) + unint.exp().sum(-1, keepdim=True)
    if bool((suffix > 0).all()):
        return -(inter - suffix.log()).sum().to(dtype)
    return _relaxed_ranking_loss_logspace(interesting, uninteresting)


def _relaxed_ranking_loss_logspace(interesting, uninteresting):
    """The same loss through reverse log-cumsum-exp: finite for any score spread."""
    suffix = torch.logcumsumexp(interesting.flip(-1), dim=-1).flip(-1)
    below = torch.logsumexp(uninteresting, dim=-1, keepdim=True)
    return -(interesting - torch.logaddexp(suffix, below)).sum()
