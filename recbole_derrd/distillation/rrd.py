"""RRD — Relaxed Ranking Distillation (Kang et al., CIKM 2020, Sec. 3.2).

The student must rank a user's K "interesting" items in the teacher's order and above the L
"uninteresting" ones, whose order among themselves is ignored (a relaxed Plackett-Luce
likelihood).  Evaluated with log-sum-exp so scores of any magnitude stay finite.
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
    # log sum_{i=k..K} exp(s_i): reverse cumulative log-sum-exp.
    suffix = torch.logcumsumexp(interesting.flip(-1), dim=-1).flip(-1)
    below = torch.logsumexp(uninteresting, dim=-1, keepdim=True)
    return -(interesting - torch.logaddexp(suffix, below)).sum()
