"""The teacher's ranking and the per-epoch RRD sampling built on it.

The teacher is frozen, so its top-N unobserved items per user are computed once, a chunk of
users at a time (never a dense users x items score matrix).  Every epoch the sampler draws,
per user, K "interesting" items from that top-N with probability ~ exp(-rank / T) and L
"uninteresting" items uniformly from the rest of the catalogue.
"""

import numpy as np
import torch

#: how many float scores one chunk of the teacher ranking may hold (64 MiB).
SCORE_CHUNK_ELEMENTS = 1 << 24


def check_room(train_counts, n_items, needed, what):
    """Every user must have ``needed`` items that are neither training items nor padding."""
    room = (n_items - 1) - train_counts
    worst = int(np.argmin(room)) if len(room) else 0
    if len(room) and room[worst] < needed:
        raise ValueError(
            "%s needs %d unobserved items per user, but user id %d has only %d "
            "(n_items - 1 - its %d training items)"
            % (what, needed, worst, room[worst], train_counts[worst])
        )


@torch.no_grad()
def teacher_top_n(score_fn, train_matrix, n, device="cpu", chunk_elements=SCORE_CHUNK_ELEMENTS):
    """Per user, the ``n`` best-scored items that are not training items (nor the padding id 0).

    Args:
        score_fn: maps a LongTensor of user ids to a [users, n_items] score tensor.
        train_matrix: scipy CSR users x items of training interactions (RecBole's
            ``dataset.inter_matrix(form='csr')``).
        n: list length.
    Returns:
        int64 numpy array [n_users, n], best first.
    """
    n_users, n_items = train_matrix.shape
    check_room(np.diff(train_matrix.indptr), n_items, n, "rrd_top_n=%d" % n)
    chunk = max(1, chunk_elements // max(n_items, 1))
    top = np.empty((n_users, n), dtype=np.int64)
    for start in range(0, n_users, chunk):
        end = min(start + chunk, n_users)
        users = torch.arange(start, end, device=device)
        scores = score_fn(users).float()
        block = train_matrix[start:end].tocoo()
        rows = torch.as_tensor(block.row, dtype=torch.long, device=device)
        cols = torch.as_tensor(block.col, dtype=torch.long, device=device)
        scores[rows, cols] = -torch.inf
        scores[:, 0] = -torch.inf
        top[start:end] = torch.topk(scores, n, dim=1).indices.cpu().numpy()
    return top


def _row_duplicates(values):
    """Boolean mask of entries equal to an earlier-sorted entry of the same row."""
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    dup_sorted = np.zeros(values.shape, dtype=bool)
    dup_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    dup = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(dup, order, dup_sorted, axis=1)
    return dup


def _in_sorted(keys, sorted_keys):
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=bool)
    idx = np.searchsorted(sorted_keys, keys)
    idx[idx == sorted_keys.size] = 0
    return sorted_keys[idx] == keys


class RRDSampler:
    """Per-epoch interesting/uninteresting item lists for every user.

    Draws depend only on ``(seed, epoch)``, so a resumed run redraws exactly the lists an
    uninterrupted one would have used, and the global RNGs are left untouched.
    """

    MAX_REJECTION_ROUNDS = 50

    def __init__(self, top_n, train_matrix, num_interesting=40, num_uninteresting=40,
                 temperature=10.0, mode="sample", seed=0):
        if mode not in ("sample", "top"):
            raise ValueError("rrd_sampling=%r must be 'sample' or 'top'" % (mode,))
        self.top_n = np.ascontiguousarray(top_n, dtype=np.int64)
        self.n_users, self.n = self.top_n.shape
        self.n_items = train_matrix.shape[1]
        self.k = num_interesting
        self.l = num_uninteresting
        self.mode = mode
        self.seed = seed
        if not 1 <= self.k <= self.n:
            raise ValueError("rrd_k=%d must be between 1 and rrd_top_n=%d" % (self.k, self.n))
        if self.l < 1:
            raise ValueError("rrd_l=%d must be >= 1" % self.l)
        if temperature <= 0:
            raise ValueError("rrd_temperature=%r must be > 0" % (temperature,))
        train_matrix = train_matrix.tocsr()
        train_matrix.sort_indices()
        check_room(np.diff(train_matrix.indptr), self.n_items, self.n + self.l,
                    "rrd_top_n + rrd_l = %d" % (self.n + self.l))
        # log p(rank) up to a constant, rank = 1..N
        self.log_p = -np.arange(1, self.n + 1, dtype=np.float64) / temperature
        # Sorted keys user * n_items + item of everything an uninteresting item may not be.
        user_of = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(train_matrix.indptr))
        self._train_keys = user_of * self.n_items + train_matrix.indices.astype(np.int64)
        self._top_keys = (np.arange(self.n_users, dtype=np.int64)[:, None] * self.n_items
                          + np.sort(self.top_n, axis=1)).ravel()

    def interesting_positions(self, rng):
        """[n_users, K] positions (0-based ranks) into the top-N, ascending (teacher order)."""
        if self.mode == "top":
            return np.broadcast_to(np.arange(self.k), (self.n_users, self.k)).copy()
        # Gumbel-top-k: the K largest of log p + Gumbel noise are a draw of K without
        # replacement with probabilities proportional to p (successive sampling).
        keys = self.log_p + rng.gumbel(size=(self.n_users, self.n))
        if self.k < self.n:
            positions = np.argpartition(-keys, self.k - 1, axis=1)[:, : self.k]
        else:
            positions = np.broadcast_to(np.arange(self.n), keys.shape).copy()
        positions.sort(axis=1)
        return positions

    def uninteresting_items(self, rng):
        """[n_users, L] distinct items, each outside the user's top-N and training items."""
        users = np.arange(self.n_users, dtype=np.int64)[:, None]
        items = rng.integers(1, self.n_items, size=(self.n_users, self.l))
        for _ in range(self.MAX_REJECTION_ROUNDS):
            keys = users * self.n_items + items
            bad = _in_sorted(keys, self._train_keys) | _in_sorted(keys, self._top_keys)
            bad |= _row_duplicates(items)
            if not bad.any():
                return items
            items[bad] = rng.integers(1, self.n_items, size=int(bad.sum()))
        # Nearly-full users: draw their lists from the explicit complement instead.
        for user in np.unique(np.nonzero(bad)[0]):
            forbidden = np.concatenate([
                self._train_keys[np.searchsorted(self._train_keys, user * self.n_items):
                                 np.searchsorted(self._train_keys, (user + 1) * self.n_items)]
                - user * self.n_items,
                self.top_n[user], [0]])
            allowed = np.setdiff1d(np.arange(self.n_items), forbidden)
            items[user] = rng.choice(allowed, size=self.l, replace=False)
        return items

    def sample(self, epoch):
        """Return (interesting [n_users, K], uninteresting [n_users, L]) item-id arrays."""
        rng = np.random.default_rng([int(self.seed), int(epoch)])
        positions = self.interesting_positions(rng)
        interesting = np.take_along_axis(self.top_n, positions, axis=1)
        return interesting, self.uninteresting_items(rng)
