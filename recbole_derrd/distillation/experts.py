"""DE — Distillation Experts (Kang et al., CIKM 2020, Sec. 3.1).

M small MLP experts map a student representation into the teacher's space; a selection
network that sees the *teacher's* representation picks one expert per row with a
Gumbel-softmax whose temperature is annealed towards 0 (so the choice becomes hard).

Two evaluation paths, chosen per call, with the same result:

* dense (early training, every expert carries weight): all M experts as two large matrix
  products in an expert-major ``[M*h, n]`` layout (the fast GEMM shape for a 20-wide input),
  the selection weights folded in before the second product, so the ``[n, M, d_t]`` tensor of
  all expert outputs never exists; rows go in blocks with a hand-written backward.
* sparse (once the Gumbel-softmax has sharpened): weights below ``weight_threshold`` (1e-6 by
  default) are dropped and only the (row, expert) pairs that remain are evaluated, grouped by
  expert into padded tiles run as batched products. At low tau that is about one expert per
  row, i.e. ~1/M of the dense arithmetic.

Dropping weights under the threshold also removes, at their source, the denormal floats that
a softmax at tiny temperature produces (they made every later epoch slower, see benchmarks).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from recbole_derrd.distillation.workspace import ScratchPool

GUMBEL_EPS = 1e-10


def tau_at_epoch(epoch, start=1.0, end=1e-10, anneal_epochs=1000):
    """Geometric annealing: ``start`` at epoch 0, ``end`` from ``anneal_epochs`` on."""
    if anneal_epochs <= 0:
        return end
    progress = min(max(epoch, 0) / anneal_epochs, 1.0)
    return max(start * (end / start) ** progress, end)


def gumbel_softmax(alpha, tau, noise=None):
    """s = softmax((log(alpha + 1e-10) + g) / tau), g ~ Gumbel(0, 1); soft, no straight-through."""
    if noise is None:
        uniform = torch.rand_like(alpha)
        noise = -torch.log(-torch.log(uniform + GUMBEL_EPS) + GUMBEL_EPS)
    return F.softmax((torch.log(alpha + GUMBEL_EPS) + noise) / tau, dim=-1)


def expert_hidden_size(student_dim, teacher_dim):
    """(d_s + d_t) // 2, or d_s // 2 when the sizes are equal (as in the official code)."""
    if student_dim == teacher_dim:
        return max(student_dim // 2, 1)
    return (student_dim + teacher_dim) // 2


#: a call is evaluated sparsely when at most this fraction of its (row, expert) weights remain.
SPARSE_MAX_ACTIVE_FRACTION = 0.25


#: smallest size of a block's [M*h, rows] temporaries in the dense path (4 MiB in float32).
DENSE_BLOCK_ELEMENTS = 1 << 20
#: largest size (64 MiB in float32; the backward holds three of them).
DENSE_BLOCK_MAX_ELEMENTS = 1 << 24


def dense_block_rows(mh, d_t):
    """Rows per block of the dense path: at least 2 * d_t, at least DENSE_BLOCK_ELEMENTS / mh,
    and at most DENSE_BLOCK_MAX_ELEMENTS / mh.

    Every block streams the [M*h, d_t] second-layer weights through two products, so wider
    teachers need taller blocks to amortise that traffic, while the cap keeps the temporaries
    in cache-friendly sizes (the measurements behind the bounds: benchmarks/RESULTS.md).  The
    result does not depend on the blocks beyond float rounding (tested).
    """
    rows = max(2 * d_t, DENSE_BLOCK_ELEMENTS // mh)
    return max(1, min(rows, DENSE_BLOCK_MAX_ELEMENTS // mh))


def _expert_major(weights):
    """[n, M] weights as a contiguous [M, n] copy, so a block's [M, 1, rows] view has unit
    stride along rows: torch's broadcast multiply over [M, h, rows] is several times slower
    through the strided view ``weights[block].t()`` (profile in benchmarks/RESULTS.md)."""
    return weights.t().contiguous()


class _DenseMixture(torch.autograd.Function):
    """sum_m w[:, m] * (relu(x W1_m + b1_m) W2_m + b2_m) for all M experts at once.

    Expert-major layout: a block's hidden is [M*h, rows] = [W1; b1]^T [x, 1]^T, several times
    faster than x W1 for a narrow x, with the bias inside the product.  Rows are processed
    in blocks of bounded size, and the backward recomputes a block's hidden layer (the cheap
    d_s-wide product, ~3% of the FLOPs), so no [M*h, n] tensor lives from the forward to the
    backward pass (the unblocked version kept two: about 77 MB for one CiteULike batch's
    users and items): memory stays flat in the batch size, at about the same speed.
    """

    @staticmethod
    def forward(ctx, x, weights, w1, b1, w2, b2, pool):
        n, m = weights.shape
        mh = w2.shape[0]
        x_aug = torch.cat([x, x.new_ones(n, 1)], 1)
        w1_aug = torch.cat([w1, b1.unsqueeze(0)], 0)
        out = weights @ b2
        rows = dense_block_rows(mh, w2.shape[1])
        hidden_buf, mixed_buf = pool.take((mh * rows,), x), pool.take((mh * rows,), x)
        weights_t = _expert_major(weights)
        for start in range(0, n, rows):
            block = slice(start, min(start + rows, n))
            nb = block.stop - start
            hidden = torch.mm(w1_aug.t(), x_aug[block].t(), out=hidden_buf[:mh * nb].view(mh, nb))
            hidden.clamp_min_(0)
            mixed = mixed_buf[:mh * nb].view(m, -1, nb)
            torch.mul(hidden.view(m, -1, nb), weights_t[:, block].unsqueeze(1), out=mixed)
            out[block].addmm_(mixed.view(mh, nb).t(), w2)
        pool.give(hidden_buf, mixed_buf)
        ctx.save_for_backward(x_aug, weights, w1_aug, w2, b2)
        ctx.pool = pool
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x_aug, weights, w1_aug, w2, b2 = ctx.saved_tensors
        pool = ctx.pool
        n, m = weights.shape
        mh = w2.shape[0]
        grad_out = grad_out.contiguous()
        grad_w1_aug = torch.zeros_like(w1_aug)
        grad_w2 = torch.zeros_like(w2)
        grad_b2 = weights.t() @ grad_out
        grad_weights = grad_out @ b2.t()
        grad_x = x_aug.new_empty(n, x_aug.shape[1] - 1) if ctx.needs_input_grad[0] else None
        rows = dense_block_rows(mh, w2.shape[1])
        bufs = [pool.take((mh * rows,), x_aug) for _ in range(3)]
        weights_t = _expert_major(weights)
        for start in range(0, n, rows):
            block = slice(start, min(start + rows, n))
            nb = block.stop - start
            hidden, grad_mixed, work = (buf[:mh * nb].view(mh, nb) for buf in bufs)
            w_block = weights_t[:, block].unsqueeze(1)  # [M, 1, rows]
            torch.mm(w1_aug.t(), x_aug[block].t(), out=hidden).clamp_min_(0)
            torch.mm(w2, grad_out[block].t(), out=grad_mixed)
            # d/dw_m = <grad, E_m(x)> = sum over the expert's hidden units of grad_mixed * hidden
            torch.mul(grad_mixed, hidden, out=work)
            grad_weights[block] += work.view(m, -1, nb).sum(1).t()
            torch.mul(hidden.view(m, -1, nb), w_block, out=work.view(m, -1, nb))  # mixed
            grad_w2.addmm_(work, grad_out[block])
            grad_mixed.view(m, -1, nb).mul_(w_block)
            grad_pre = torch.ops.aten.threshold_backward.grad_input(grad_mixed, hidden, 0, grad_input=work)
            grad_w1_aug.addmm_(x_aug[block].t(), grad_pre.t())
            if grad_x is not None:
                torch.mm(grad_pre.t(), w1_aug[:-1].t(), out=grad_x[block])
        pool.give(*bufs)
        return grad_x, grad_weights, grad_w1_aug[:-1], grad_w1_aug[-1], grad_w2, grad_b2, None


def _tile_rows(counts):
    """Rows per tile for the sparse path: the candidate size with the least padded work.

    Rows come sorted by expert; each expert's rows are cut into tiles of C rows, padded, and
    all tiles run as one batched product, so the padded work is (number of tiles) x C.
    """
    active = [c for c in counts if c]
    total, n_active = sum(active), len(active)
    candidates = {max(active)} | {math.ceil(f * total / n_active) for f in (1.0, 1.25, 1.5, 2.0)}
    return min(sorted(candidates), key=lambda c: sum(math.ceil(n / c) for n in active) * c)


class _Tiles:
    """Where each kept (row, expert) pair goes in the sparse path's padded tiles.

    Pairs are sorted by expert and cut into tiles of ``size`` slots holding one expert each;
    all tiles run as one batched product.  When every expert fits one tile without much
    padding there is exactly one tile per expert (``expert`` is None: the expert weights are
    used in place); otherwise tile t runs expert ``expert[t]``.
    """

    def __init__(self, rows, flat, pair_slot, slot_rows, expert, count, size):
        self.rows = rows            # [P] row of each pair
        self.flat = flat            # [P] index of each pair's weight in weights.view(-1)
        self.pair_slot = pair_slot  # [P] slot (tile * size + position) of each pair
        self.slot_rows = slot_rows  # [count * size] row in each slot; n_rows marks padding
        self.expert = expert        # [count] expert of each tile, or None (tile t = expert t)
        self.count = count
        self.size = size

    @classmethod
    def of(cls, weights, num_experts):
        n = weights.shape[0]
        rows, experts = torch.nonzero(weights, as_tuple=True)
        order = torch.argsort(experts, stable=True)
        rows, experts = rows[order], experts[order]
        counts = torch.bincount(experts, minlength=num_experts)
        count_list = counts.tolist()
        first = torch.cumsum(counts, 0) - counts  # first pair of each expert
        within = torch.arange(len(rows), device=rows.device) - first[experts]
        if num_experts * max(count_list) <= 2 * len(rows):  # balanced: one tile per expert
            size, expert, tiles_before = max(count_list), None, torch.arange(num_experts, device=rows.device)
            n_tiles = num_experts
        else:
            size = _tile_rows(count_list)
            per_expert = (counts + size - 1) // size
            tiles_before = torch.cumsum(per_expert, 0) - per_expert
            expert = torch.repeat_interleave(torch.arange(num_experts, device=rows.device), per_expert)
            n_tiles = len(expert)
        pair_slot = (tiles_before[experts] + within // size) * size + within % size
        slot_rows = torch.full((n_tiles * size,), n, dtype=rows.dtype, device=rows.device)
        slot_rows[pair_slot] = rows
        return cls(rows, rows * num_experts + experts, pair_slot, slot_rows, expert, n_tiles, size)


class _SparseMixture(torch.autograd.Function):
    """sum over the kept pairs of weights[r, m] * E_m(x[r]), tiled by expert (see _Tiles).

    The backward is written out (four batched products and one gather or scatter per input)
    instead of autograd's graph through the padding, masks, gathers and scatters, which cost
    more than the products themselves at CiteULike's batch sizes.
    """

    @staticmethod
    def forward(ctx, x, weights, w1, b1, w2, b2, tiles):
        n, m = weights.shape
        d_s, d_t = x.shape[1], w2.shape[1]
        h = b1.numel() // m
        experts = (w1.view(d_s, m, h).transpose(0, 1).contiguous(), b1.view(m, h), w2.view(m, h, d_t), b2)
        if tiles.expert is not None:
            experts = tuple(t.index_select(0, tiles.expert) for t in experts)
        tile_w1, tile_b1, tile_w2, tile_b2 = experts
        padded = torch.cat([x, x.new_zeros(1, d_s)]).index_select(0, tiles.slot_rows)
        padded = padded.view(tiles.count, tiles.size, d_s)
        hidden = torch.baddbmm(tile_b1.unsqueeze(1), padded, tile_w1).clamp_min_(0)
        out = torch.baddbmm(tile_b2.unsqueeze(1), hidden, tile_w2)  # [tiles, size, d_t]
        pair_out = out.view(-1, d_t).index_select(0, tiles.pair_slot)
        pair_w = weights.reshape(-1).index_select(0, tiles.flat)
        mixed = x.new_zeros(n, d_t).index_add_(0, tiles.rows, pair_out * pair_w.unsqueeze(1))
        ctx.save_for_backward(padded, hidden, pair_out, pair_w, tile_w1, tile_w2)
        ctx.tiles, ctx.sizes = tiles, (n, m, d_s, h, d_t)
        return mixed

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        padded, hidden, pair_out, pair_w, tile_w1, tile_w2 = ctx.saved_tensors
        tiles, (n, m, d_s, h, d_t) = ctx.tiles, ctx.sizes
        pair_grad = grad.index_select(0, tiles.rows)  # [P, d_t]
        grad_weights = None
        if ctx.needs_input_grad[1]:
            grad_weights = grad.new_zeros(n * m).index_copy_(
                0, tiles.flat, torch.linalg.vecdot(pair_grad, pair_out)).view(n, m)
        pair_grad.mul_(pair_w.unsqueeze(1))
        grad_out = grad.new_zeros(tiles.count * tiles.size, d_t).index_copy_(0, tiles.pair_slot, pair_grad)
        grad_out = grad_out.view(tiles.count, tiles.size, d_t)
        grad_b2 = grad_out.sum(1)
        grad_w2 = torch.bmm(hidden.transpose(1, 2), grad_out)
        grad_hidden = torch.bmm(grad_out, tile_w2.transpose(1, 2))
        grad_hidden = torch.ops.aten.threshold_backward.grad_input(grad_hidden, hidden, 0, grad_input=grad_hidden)
        grad_b1 = grad_hidden.sum(1)
        grad_w1 = torch.bmm(padded.transpose(1, 2), grad_hidden)  # [tiles, d_s, h]
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_padded = torch.bmm(grad_hidden, tile_w1.transpose(1, 2)).view(-1, d_s)
            grad_x = grad.new_zeros(n + 1, d_s).index_add_(0, tiles.slot_rows, grad_padded)[:n]
        if tiles.expert is not None:  # tiles -> experts
            grad_w1, grad_b1, grad_w2, grad_b2 = (
                g.new_zeros((m,) + g.shape[1:]).index_add_(0, tiles.expert, g)
                for g in (grad_w1, grad_b1, grad_w2, grad_b2))
        return (grad_x, grad_weights, grad_w1.transpose(0, 1).reshape(d_s, m * h), grad_b1.reshape(-1),
                grad_w2.reshape(m * h, d_t), grad_b2, None)


def reference_mixture(x, weights, w1, b1, w2, b2):
    """The mixture computed the straightforward way, as the official code does: every expert's
    output for every row ([n, M, d_t]), weighted and summed, through autograd.  The same
    result as the dense and sparse paths (tested); kept to measure what they save."""
    m, d_t = b2.shape
    hidden = torch.relu(x @ w1 + b1).view(x.shape[0], m, -1)
    outputs = torch.einsum("nmh,mhd->nmd", hidden, w2.view(m, -1, d_t)) + b2
    return (weights.unsqueeze(-1) * outputs).sum(1)


class DistillationExperts(nn.Module):
    """M experts d_s -> h -> d_t (ReLU) plus a selection network Linear(d_t -> M) + softmax.

    ``weight_threshold``: selection weights below it count as zero (0 keeps every weight that
    is not exactly zero: exact, but denormal weights then reach the dense path at small tau).
    """

    def __init__(self, student_dim, teacher_dim, num_experts=30, weight_threshold=1e-6):
        super().__init__()
        if num_experts < 1:
            raise ValueError("num_experts must be >= 1, got %r" % num_experts)
        if not 0 <= weight_threshold < 1:
            raise ValueError("weight_threshold must be in [0, 1), got %r" % weight_threshold)
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.num_experts = num_experts
        self.weight_threshold = weight_threshold
        self.hidden = expert_hidden_size(student_dim, teacher_dim)
        m, h = num_experts, self.hidden
        # Each expert is initialised like torch's nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        self.w1 = nn.Parameter(self._uniform((student_dim, m * h), student_dim))
        self.b1 = nn.Parameter(self._uniform((m * h,), student_dim))
        self.w2 = nn.Parameter(self._uniform((m * h, teacher_dim), h))
        self.b2 = nn.Parameter(self._uniform((m, teacher_dim), h))
        self.selection = nn.Linear(teacher_dim, m) if m > 1 else None
        self._scratch = ScratchPool()

    @staticmethod
    def _uniform(shape, fan_in):
        bound = 1.0 / math.sqrt(fan_in)
        return torch.empty(shape).uniform_(-bound, bound)

    def selection_weights(self, teacher_repr, tau, threshold=True):
        """[n, M] expert weights for each row; all ones when there is a single expert.
        ``threshold=False`` keeps the weights below ``weight_threshold`` (the reference)."""
        if self.selection is None:
            return teacher_repr.new_ones(teacher_repr.shape[0], 1)
        alpha = F.softmax(self.selection(teacher_repr), dim=-1)
        weights = gumbel_softmax(alpha, tau)
        if threshold and self.weight_threshold > 0:
            weights = weights.masked_fill(weights < self.weight_threshold, 0)
        return weights

    def mix(self, student_repr, weights, path="auto"):
        """sum_m weights[:, m] * E_m(student_repr) -> [n, d_t].

        ``path``: "dense", "sparse" (only the non-zero weights), "auto" (sparse when at most
        :data:`SPARSE_MAX_ACTIVE_FRACTION` of the weights are non-zero), or "reference" (the
        straightforward computation, see :func:`reference_mixture`).
        """
        if path == "reference":
            return reference_mixture(student_repr, weights, self.w1, self.b1, self.w2, self.b2)
        if path == "auto":
            active = int(torch.count_nonzero(weights))
            path = "sparse" if active <= SPARSE_MAX_ACTIVE_FRACTION * weights.numel() else "dense"
        if path == "dense":
            return _DenseMixture.apply(student_repr, weights, self.w1, self.b1, self.w2, self.b2,
                                       self._scratch)
        if path != "sparse":
            raise ValueError("path must be 'auto', 'dense' or 'sparse', got %r" % (path,))
        tiles = _Tiles.of(weights, self.num_experts)
        return _SparseMixture.apply(student_repr, weights, self.w1, self.b1, self.w2, self.b2, tiles)

    def forward(self, student_repr, teacher_repr, tau, path="auto"):
        weights = self.selection_weights(teacher_repr, tau, threshold=path != "reference")
        return self.mix(student_repr, weights, path)

    def loss(self, student_repr, teacher_repr, tau, row_weights=None, path="auto"):
        """Squared L2 distance to the teacher representation, summed over rows.

        ``row_weights`` ([n], optional) scales each row's distance (DE's 0.5 for items);
        ``path`` as in :meth:`mix`.
        """
        teacher_repr = teacher_repr.detach()
        distance = (teacher_repr - self(student_repr, teacher_repr, tau, path)).pow(2).sum(-1)
        return distance.sum() if row_weights is None else (distance * row_weights).sum()

    def loss_on(self, student_lookup, teacher_lookup, ids, tau, path="auto"):
        """:meth:`loss` on rows ``ids`` of the two models' representation lookups (DE's rows,
        HTD's group assignment): the frozen teacher's rows are looked up without a graph."""
        with torch.no_grad():
            target = teacher_lookup(ids)
        return self.loss(student_lookup(ids), target, tau, path=path)
