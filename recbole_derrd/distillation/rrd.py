"""RRD — Relaxed Ranking Distillation (Kang et al., CIKM 2020, Sec. 3.2).

The student must rank a user's K "interesting" items in the teacher's order and above the L
"uninteresting" ones, whose order among themselves is ignored (a relaxed Plackett-Luce
likelihood).  Evaluated stably so scores of any magnitude stay finite.
"""

import torch

#: suffix sums below this (shifted, float64) leave the fast path: 1 / S must stay finite.
_SMALLEST_SUFFIX = 1e-290


def relaxed_ranking_loss(interesting, uninteresting):
    """-sum_u sum_k [ s_k - log( sum_{i>=k} exp(s_i) + sum_j exp(u_j) ) ].

    Args:
        interesting: [U, K] student scores of the interesting items, in teacher order.
        uninteresting: [U, L] student scores of the uninteresting items.
    Returns:
        scalar tensor, summed over users and positions.
    """
    # Fast path: shift every row by its maximum, exp / reverse cumsum / log in float64, and a
    # closed-form backward (one pass instead of autograd's dozen; torch's logcumsumexp is also
    # several times slower on CPU).  The shifted sums are >= 1 up to the row maximum's
    # position; only when a later suffix falls below ~1e-290 (score spreads beyond ~660) does
    # the log-cumsum-exp path below take over.
    with torch.no_grad():
        inter, unint = interesting.double(), uninteresting.double()
        shift = torch.maximum(inter.max(dim=-1, keepdim=True).values,
                              unint.max(dim=-1, keepdim=True).values)
        inter, unint = inter - shift, unint - shift
        exp_inter, exp_unint = inter.exp(), unint.exp()
        suffix = exp_inter.flip(-1).cumsum(-1).flip(-1).add_(exp_unint.sum(-1, keepdim=True))
        fast = bool((suffix > _SMALLEST_SUFFIX).all())
    if fast:
        return _RelaxedRanking.apply(interesting, uninteresting, inter, exp_inter, exp_unint, suffix)
    return _relaxed_ranking_loss_logspace(interesting, uninteresting)


class _RelaxedRanking(torch.autograd.Function):
    """The loss from the shifted quantities, with its gradient in closed form.

    With S_k = sum_{i>=k} e^{s_i} + sum_j e^{u_j} (all shifted) and C_i = sum_{k<=i} 1 / S_k:
    d/ds_i = e^{s_i} C_i - 1 and d/du_j = e^{u_j} C_K.
    """

    @staticmethod
    def forward(ctx, interesting, uninteresting, shifted_inter, exp_inter, exp_unint, suffix):
        ctx.save_for_backward(exp_inter, exp_unint, suffix)
        ctx.dtypes = interesting.dtype, uninteresting.dtype
        return (suffix.log().sum() - shifted_inter.sum()).to(interesting.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        exp_inter, exp_unint, suffix = ctx.saved_tensors
        reach = suffix.reciprocal().cumsum_(-1)
        grad = grad.double()
        grad_inter = (exp_inter * reach).sub_(1).mul_(grad).to(ctx.dtypes[0])
        grad_unint = (exp_unint * reach[..., -1:]).mul_(grad).to(ctx.dtypes[1])
        return grad_inter, grad_unint, None, None, None, None


def _relaxed_ranking_loss_logspace(interesting, uninteresting):
    """The same loss through reverse log-cumsum-exp: finite for any score spread."""
    suffix = torch.logcumsumexp(interesting.flip(-1), dim=-1).flip(-1)
    below = torch.logsumexp(uninteresting, dim=-1, keepdim=True)
    return -(interesting - torch.logaddexp(suffix, below)).sum()


def reference_relaxed_ranking_loss(interesting, uninteresting):
    """The same loss the straightforward way, as the official code computes it: exp, reverse
    cumulative sum and log in the scores' precision, through autograd (overflows for score
    spreads beyond ~88 in float32).  Kept to measure what the fast path saves."""
    exp_inter = interesting.exp()
    suffix = exp_inter.flip(-1).cumsum(-1).flip(-1) + uninteresting.exp().sum(-1, keepdim=True)
    return -(interesting - suffix.log()).sum()
