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


def check_room(train_counts, n_items, needed, what, user_label=str, rows="user", cols="item"):
    """Every user must have ``needed`` items that are neither training items nor padding.

    ``user_label`` turns an internal user id into what the message shows (e.g. its token);
    ``rows`` / ``cols`` name the two sides (the item-side lists swap them).
    """
    room = (n_items - 1) - train_counts
    worst = int(np.argmin(room)) if len(room) else 0
    if len(room) and room[worst] < needed:
        raise ValueError(
            "%s needs %d unobserved %ss per %s, but %s %s has only %d "
            "(n_%ss - 1 - its %d training %ss)"
            % (what, needed, cols, rows, rows, user_label(worst), room[worst], cols, train_counts[worst], cols)
        )


def mask_pairs(scores, pairs, first_row=0, first_col=0):
    """Set ``scores[r, c]`` to -inf for every stored pair (first_row + r, first_col + c) of the
    scipy CSR ``pairs`` that falls inside this score block (e.g. a user's training items)."""
    indptr = pairs.indptr[first_row:first_row + scores.shape[0] + 1]  # straight from the CSR arrays
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    cols = pairs.indices[indptr[0]:indptr[-1]] - first_col
    keep = (cols >= 0) & (cols < scores.shape[1])
    scores[torch.as_tensor(rows[keep], dtype=torch.long, device=scores.device),
           torch.as_tensor(cols[keep], dtype=torch.long, device=scores.device)] = -torch.inf


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
    top = np.empty((n_users, n), dtype=np.int64)
    for users, scores in _unobserved_score_chunks(score_fn, train_matrix, device, chunk_elements):
        scores[:, 0] = -torch.inf
        top[users.cpu().numpy()] = torch.topk(scores, n, dim=1).indices.cpu().numpy()
    return top


def _unobserved_score_chunks(score_fn, train_matrix, device, chunk_elements):
    """(user ids, their [users, n_items] float scores with the training pairs at -inf), a chunk
    of users at a time (at most ``chunk_elements`` scores), the users in order."""
    n_users, n_items = train_matrix.shape
    chunk = max(1, chunk_elements // max(n_items, 1))
    for start in range(0, n_users, chunk):
        users = torch.arange(start, min(start + chunk, n_users), device=device)
        scores = score_fn(users).float()
        mask_pairs(scores, train_matrix, start)
        yield users, scores


@torch.no_grad()
def teacher_top_users(score_fn, train_matrix, n, device="cpu", chunk_elements=SCORE_CHUNK_ELEMENTS):
    """Per item, the ``n`` best-scored users that did not interact with it (nor the padding user 0).

    The item-side counterpart of :func:`teacher_top_n` from the same ``score_fn`` (users ->
    [users, n_items] scores): users go in chunks and every item keeps a running top-n of the
    users seen so far, so no users x items matrix is ever held.

    Returns:
        int64 numpy array [n_items, n], best first (row 0, the padding item, is meaningless).
    """
    n_users, n_items = train_matrix.shape
    counts = np.bincount(train_matrix.indices, minlength=n_items)
    check_room(counts[1:], n_users, n, "ir_top_n=%d" % n, lambda i: str(i + 1), rows="item", cols="user")
    best_scores = torch.empty((n_items, 0), device=device)
    best_users = torch.empty((n_items, 0), dtype=torch.long, device=device)
    for users, scores in _unobserved_score_chunks(score_fn, train_matrix, device, chunk_elements):
        scores[users == 0] = -torch.inf  # the padding user
        candidates = torch.cat([best_scores, scores.t()], 1)
        candidate_users = torch.cat([best_users, users.expand(n_items, -1)], 1)
        top = torch.topk(candidates, min(n, candidates.shape[1]), dim=1)
        best_scores, best_users = top.values, torch.gather(candidate_users, 1, top.indices)
    return best_users.cpu().numpy()


def _row_duplicates(values):
    """Boolean mask of entries equal to an earlier-sorted entry of the same row ([R, L] tensor)."""
    ordered, order = torch.sort(values, dim=1, stable=True)
    dup_sorted = torch.zeros_like(values, dtype=torch.bool)
    dup_sorted[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    return torch.zeros_like(dup_sorted).scatter_(1, order, dup_sorted)


def _in_sorted(keys, sorted_keys):
    """Membership of ``keys`` in ``sorted_keys`` (1-D, or one sorted row per row of keys)."""
    if sorted_keys.shape[-1] == 0:
        return torch.zeros(keys.shape, dtype=torch.bool)
    idx = torch.searchsorted(sorted_keys, keys).clamp_(max=sorted_keys.shape[-1] - 1)
    found = sorted_keys[idx] if sorted_keys.dim() == 1 else torch.gather(sorted_keys, 1, idx)
    return found == keys


class RRDSampler:
    """Per-epoch interesting/uninteresting item lists for every user.

    Draws depend only on ``(seed, epoch)``, so a resumed run redraws exactly the lists an
    uninterrupted one would have used, and the global RNGs are left untouched.  Everything is
    vectorised over users (no Python loop per user); users are processed in blocks of
    ``USER_BLOCK`` so the temporary [users, N] keys stay bounded on large catalogues.
    """

    MAX_REJECTION_ROUNDS = 50
    USER_BLOCK = 1 << 16

    def __init__(self, top_n, train_matrix, num_interesting=40, num_uninteresting=40,
                 temperature=10.0, mode="sample", seed=0, prefix="rrd", sides=("user", "item"), stream=None):
        """``prefix`` names the keys in messages, ``sides`` what the rows and columns are
        (``("item", "user")`` for the item-side lists); ``stream`` separates the draws of two
        samplers with one seed (None: the RRD lists' own stream)."""
        self.stream = stream
        if mode not in ("sample", "top"):
            raise ValueError("%s_sampling=%r must be 'sample' or 'top'" % (prefix, mode))
        self.n_items = train_matrix.shape[1]
        # item ids fit int32 for any catalogue RecBole can hold; halves the [users, N] tables.
        id_type = np.int32 if self.n_items < 2 ** 31 else np.int64
        self.top_n = torch.from_numpy(np.ascontiguousarray(top_n, dtype=id_type))
        self.n_users, self.n = self.top_n.shape
        self.k = num_interesting
        self.l = num_uninteresting
        self.mode = mode
        self.seed = seed
        if not 1 <= self.k <= self.n:
            raise ValueError("%s_k=%d must be between 1 and %s_top_n=%d" % (prefix, self.k, prefix, self.n))
        if self.l < 1:
            raise ValueError("%s_l=%d must be >= 1" % (prefix, self.l))
        if temperature <= 0:
            raise ValueError("%s_temperature=%r must be > 0" % (prefix, temperature))
        train_matrix = train_matrix.tocsr()
        train_matrix.sort_indices()
        check_room(np.diff(train_matrix.indptr), self.n_items, self.n + self.l,
                   "%s_top_n + %s_l = %d" % (prefix, prefix, self.n + self.l), rows=sides[0], cols=sides[1])
        # -log p(rank) up to a constant, rank = 1..N
        self.neg_log_p = np.arange(1, self.n + 1, dtype=np.float32) / np.float32(temperature)
        # Training positives as compact CSR (indptr + sorted int32 item ids); membership of
        # (user, item) is one searchsorted on the row-major keys user * n_items + item.
        user_of = np.repeat(np.arange(self.n_users, dtype=np.int64), np.diff(train_matrix.indptr))
        self._train_keys = torch.from_numpy(user_of * self.n_items + train_matrix.indices.astype(np.int64))
        self._top_sorted = torch.sort(self.top_n, dim=1).values

    def __deepcopy__(self, memo):
        # Read-only after construction; RecBole's get_flops deep-copies the model, and the
        # [users, N] tables must not be duplicated on large catalogues.
        return self

    def interesting_positions(self, rng, users=None):
        """[users, K] positions (0-based ranks) into the top-N, ascending (teacher order)."""
        n_rows = self.n_users if users is None else len(users)
        if self.mode == "top":
            return torch.arange(self.k).expand(n_rows, self.k).clone()
        # Exponential race: with E_i ~ Exp(1), the K smallest E_i / p_i (here log E_i - log p_i)
        # are a draw of K without replacement with probabilities proportional to p, the same
        # law as Gumbel-top-k and successive sampling.
        keys = np.log(np.maximum(rng.standard_exponential(size=(n_rows, self.n), dtype=np.float32),
                                 np.finfo(np.float32).tiny))
        keys += self.neg_log_p
        if self.k == self.n:
            return torch.arange(self.n).expand(n_rows, self.n).clone()
        positions = torch.topk(torch.from_numpy(keys), self.k, dim=1, largest=False, sorted=False).indices
        return torch.sort(positions, dim=1).values

    def _forbidden(self, users, items):
        """Items that are padding, a training item or in the top-N of their row's user."""
        keys = users.unsqueeze(1) * self.n_items + items
        in_top = _in_sorted(items.to(self._top_sorted.dtype), self._top_sorted[users])
        return in_top | _in_sorted(keys, self._train_keys) | (items == 0)

    def uninteresting_items(self, rng, users=None):
        """[users, L] distinct items, each outside the user's top-N and training items."""
        users = torch.arange(self.n_users) if users is None else users
        items = torch.from_numpy(rng.integers(1, self.n_items, size=(len(users), self.l)))
        pending = torch.arange(len(users))  # rows still to be checked
        for _ in range(self.MAX_REJECTION_ROUNDS):
            block = items[pending]
            bad = self._forbidden(users[pending], block) | _row_duplicates(block)
            rows_bad = bad.any(dim=1)
            if not bool(rows_bad.any()):
                return items
            pending, bad, block = pending[rows_bad], bad[rows_bad], block[rows_bad]
            block[bad] = torch.from_numpy(rng.integers(1, self.n_items, size=int(bad.sum())))
            items[pending] = block
        # Nearly-full users: draw their lists from the explicit complement instead.
        for row in pending.tolist():
            user = int(users[row])
            lo, hi = (int(torch.searchsorted(self._train_keys, user * self.n_items + off))
                      for off in (0, self.n_items))
            forbidden = np.concatenate([(self._train_keys[lo:hi] - user * self.n_items).numpy(),
                                        self.top_n[user].numpy(), [0]])
            allowed = np.setdiff1d(np.arange(self.n_items), forbidden)
            items[row] = torch.from_numpy(rng.choice(allowed, size=self.l, replace=False))
        return items

    def sample(self, epoch):
        """Return (interesting [n_users, K], uninteresting [n_users, L]) int64 item-id arrays."""
        entropy = [int(self.seed), int(epoch)] + ([] if self.stream is None else [int(self.stream)])
        rng = np.random.default_rng(entropy)
        interesting = np.empty((self.n_users, self.k), dtype=np.int64)
        uninteresting = np.empty((self.n_users, self.l), dtype=np.int64)
        for start in range(0, self.n_users, self.USER_BLOCK):
            users = torch.arange(start, min(start + self.USER_BLOCK, self.n_users))
            positions = self.interesting_positions(rng, users)
            interesting[users.numpy()] = torch.gather(self.top_n[users], 1, positions).numpy()
            uninteresting[users.numpy()] = self.uninteresting_items(rng, users).numpy()
        return interesting, uninteresting
