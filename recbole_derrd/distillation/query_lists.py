"""RRD lists drawn per batch from the teacher's scores for each query (a sequence prefix).

A sequential query is a training prefix, and a batch's prefixes are different every epoch
(RecBole shuffles its augmented instances), so the general path's per-user table (the teacher's
top-N computed once, lists drawn per epoch) has no row to live in.  Here the lists are drawn for
the batch at hand: the teacher's scores of the batch's prefixes, its excluded items masked, a
top-N per row, then the same law as :class:`~recbole_derrd.distillation.ranking.RRDSampler`:
K interesting items drawn from the top-N with probability ~ exp(-rank / T) (or its top K) and
kept in the teacher's order, L distinct uninteresting items uniform over the rest.

Memory stays bounded: the scores of ``row_block`` rows at a time ([rows, n_items] floats),
never an [instances x items] matrix.
"""

import torch

from recbole_derrd.distillation.ranking import _in_sorted, _row_duplicates

#: float scores one block of rows may hold (64 MiB)
SCORE_BLOCK_ELEMENTS = 1 << 24


class QueryListSampler:
    """Draws [rows, K + L] lists (K interesting in teacher order, then L uninteresting) for a
    batch of queries; the draws depend only on the generator's seed and the call order."""

    MAX_REJECTION_ROUNDS = 50

    def __init__(self, n_items, top_n, k, l, temperature, mode="sample", prefix="rrd",
                 block_elements=SCORE_BLOCK_ELEMENTS):
        if mode not in ("sample", "top"):
            raise ValueError("%s_sampling=%r must be 'sample' or 'top'" % (prefix, mode))
        if not 1 <= k <= top_n:
            raise ValueError("%s_k=%d must be between 1 and %s_top_n=%d" % (prefix, k, prefix, top_n))
        if l < 1:
            raise ValueError("%s_l=%d must be >= 1" % (prefix, l))
        if temperature <= 0:
            raise ValueError("%s_temperature=%r must be > 0" % (prefix, temperature))
        self.n_items, self.n, self.k, self.l, self.mode = n_items, top_n, k, l, mode
        self.neg_log_p = torch.arange(1, top_n + 1, dtype=torch.float32) / float(temperature)
        self.row_block = max(1, block_elements // max(n_items, 1))

    @torch.no_grad()
    def draw(self, score_fn, rows, excluded, generator):
        """Lists for ``rows``.

        Args:
            score_fn: [R] row ids -> [R, n_items] teacher scores of those queries.
            rows: [R] LongTensor of query rows (indices into the bound batch).
            excluded: [R, E] item ids never listed for that row (its target, its prefix's items;
                0, the padding id, may fill unused places; it is always excluded).
            generator: torch.Generator (CPU) of the draws.
        Returns:
            [R, K + L] LongTensor on the scores' device.
        """
        return self.lists(self.top_of(score_fn, rows, excluded), excluded, generator)

    @torch.no_grad()
    def top_of(self, score_fn, rows, excluded):
        """[R, N] the teacher's best items per row (best first), its excluded items and the
        padding id left out; a block of rows of scores at a time."""
        tops = []
        for start in range(0, len(rows), self.row_block):
            scores = score_fn(rows[start:start + self.row_block]).float().clone()
            scores.scatter_(1, excluded[start:start + self.row_block].to(scores.device), -torch.inf)
            scores[:, 0] = -torch.inf
            tops.append(torch.topk(scores, self.n, dim=1).indices)
        return torch.cat(tops, 0)

    @torch.no_grad()
    def lists(self, top, excluded, generator):
        """[R, K + L] lists drawn from the rows' top-N ([R, N], best first)."""
        top = top.long()
        return torch.cat([self._interesting(top, generator),
                          self._uninteresting(top, excluded.to(top.device), generator)], 1)

    def _interesting(self, top, generator):
        if self.mode == "top" or self.k == self.n:
            return top[:, : self.k]
        # exponential race (as RRDSampler): the K smallest log E - log p are a draw without
        # replacement with probabilities proportional to p
        keys = torch.empty(top.shape, dtype=torch.float32).exponential_(generator=generator)
        keys = keys.clamp_(min=torch.finfo(torch.float32).tiny).log_().add_(self.neg_log_p)
        positions = torch.topk(keys, self.k, dim=1, largest=False, sorted=False).indices
        return top.gather(1, torch.sort(positions, dim=1).values.to(top.device))

    def _uninteresting(self, top, excluded, generator):
        forbidden = torch.sort(torch.cat([top, excluded], 1).cpu(), dim=1).values
        items = torch.randint(1, self.n_items, (len(top), self.l), generator=generator)
        for _ in range(self.MAX_REJECTION_ROUNDS):
            bad = _in_sorted(items, forbidden) | _row_duplicates(items)
            count = int(bad.sum())
            if not count:
                return items.to(top.device)
            items[bad] = torch.randint(1, self.n_items, (count,), generator=generator)
        # rows whose allowed items are few: draw from the explicit complement
        for row in torch.nonzero((_in_sorted(items, forbidden) | _row_duplicates(items)).any(1)).view(-1).tolist():
            allowed = torch.ones(self.n_items, dtype=torch.bool)
            allowed[forbidden[row]] = False
            allowed[0] = False
            choices = torch.nonzero(allowed).view(-1)
            if len(choices) < self.l:
                raise ValueError("a query has only %d items outside its top-%d and its excluded items; "
                                 "rrd_l=%d needs more" % (len(choices), self.n, self.l))
            items[row] = choices[torch.randperm(len(choices), generator=generator)[: self.l]]
        return items.to(top.device)


# --------------------------------------------------------------------------- the prefix table
#: odd 64-bit multipliers of the prefix key (fixed: a table built in one process is read in another)
_KEY_GENERATOR_SEED = 20201204


def prefix_keys(users, lengths, targets, prefixes):
    """[R] int64 keys of training rows (user, prefix length, target, prefix items): a random
    linear hash modulo 2^64.  Equal rows get equal keys (and the same teacher lists, so a shared
    key between equal rows is harmless); distinct rows collide with negligible probability."""
    width = prefixes.shape[1] + 3
    generator = torch.Generator().manual_seed(_KEY_GENERATOR_SEED)
    weights = torch.randint(-(2 ** 62), 2 ** 62, (width,), generator=generator, dtype=torch.long) * 2 + 1
    columns = torch.cat([users.view(-1, 1), lengths.view(-1, 1), targets.view(-1, 1), prefixes], 1).long()
    return (columns.cpu() * weights).sum(1)  # int64 arithmetic wraps modulo 2^64


class PrefixTable:
    """What the frozen teacher says about every training prefix, computed once and found again
    by key: its top-N items (RRD) and its prefix representation (DE).  RecBole's training
    prefixes are the same every epoch (only reshuffled) and the teacher does not change, so one
    teacher pass before training replaces one per epoch.

    The price is memory, ``prefixes x (4 N + 4 d)`` bytes (ml-100k's 99k prefixes at N = 500
    and d = 64: 223 MB), which ``prefix_cache_mib`` bounds; a row the table lacks (a transform
    changed its prefix) is computed from the teacher on the spot."""

    def __init__(self, keys, top=None, queries=None):
        order = torch.argsort(keys)
        self.keys = keys[order]
        self.top = None if top is None else top[order].to(torch.int32 if top.max() < 2 ** 31 else torch.long)
        self.queries = None if queries is None else queries[order]

    def __deepcopy__(self, memo):
        return self  # read-only; RecBole's get_flops deep-copies the model

    def positions(self, keys):
        """(found [R] bool, positions [R] into the table; meaningless where not found)."""
        if not len(self.keys):
            return torch.zeros(len(keys), dtype=torch.bool), torch.zeros(len(keys), dtype=torch.long)
        position = torch.searchsorted(self.keys, keys).clamp_(max=len(self.keys) - 1)
        return self.keys[position] == keys, position
