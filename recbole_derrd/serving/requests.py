"""One recommendation request at the cost of its arithmetic: a prepared, reusable request path.

A request is one user's top-k over the catalogue with their training items left out.  Its
arithmetic is one matrix-vector product (items x d) and a top-k over the catalogue; anything
else on the path (building tensors, slicing a scipy matrix, choosing a layout, allocating the
score vector, waking a thread pool) is overhead that, for a narrow student, can cost more than
the arithmetic itself.  :class:`Recommender` does all of that once:

* the user and item tables are held as contiguous float32 arrays, the item table in the layout
  of the product kernel chosen for this CPU;
* the **product kernel is measured, not assumed**: matrix-vector products differ by up to 10x
  between BLAS libraries on the same CPU (torch's MKL ``mv`` against numpy's OpenBLAS ``dot``
  on AMD processors, see docs/serving.md), so the candidates are timed on the prepared tables
  when the recommender is built and the fastest is kept (``kernel=`` overrides it);
* the training items of every user are one int64 index array with offsets (a slice per
  request, no scipy call);
* the score vector is preallocated per thread (requests may run side by side in threads),
  padded to whole blocks (:func:`block_width`: up to :data:`MAX_BLOCK` items, at least ~8 k
  blocks so that the first stage prunes);
* the top-k is taken in two stages: the ``k`` blocks with the highest maxima, then, among their
  items, those scoring at least the smallest of those maxima (at least k, usually few more),
  sorted.  The k best scores always lie in those blocks, so the result is exact (ties may be
  broken differently from ``torch.topk``), and only ``k x block`` scores are read after the
  block maxima.

A request runs on the calling thread with the process's BLAS/torch thread settings; a server
that runs many requests side by side should use one thread per request
(``torch.set_num_threads(1)`` and ``OPENBLAS_NUM_THREADS=1`` / ``threadpoolctl``).
"""

import threading
import time

import numpy as np
import scipy.sparse as sp
import torch

#: largest block of the two-stage top-k (the second stage reads k x block scores).
MAX_BLOCK = 128


def block_width(n_items, k):
    """Items per block: a power of two from 8 to MAX_BLOCK giving at least ~8 k blocks."""
    width = MAX_BLOCK
    while width > 8 and n_items < 8 * k * width:
        width //= 2
    return width


#: the product kernels timed when a Recommender is built (see _KERNEL_FUNCTIONS).
KERNELS = ("numpy-dot-items-t", "numpy-dot-items", "torch-mv")


def _dot_items_t(user, items_t, out):
    np.dot(user, items_t, out=out)


def _dot_items(user, items, out):
    np.dot(items, user, out=out)


def _torch_mv(user, items, out):
    torch.mv(torch.from_numpy(items), torch.from_numpy(user), out=torch.from_numpy(out))


#: kernel name -> (item table transposed?, function(user vector, item table, out)).
_KERNEL_FUNCTIONS = {"numpy-dot-items-t": (True, _dot_items_t), "numpy-dot-items": (False, _dot_items),
                     "torch-mv": (False, _torch_mv)}


def exclusion_index(exclude, n_users, n_items):
    """(indptr int64 [n_users + 1], indices int64) of a users x items scipy matrix, checked.

    None gives an empty index (nothing excluded)."""
    if exclude is None:
        return np.zeros(n_users + 1, dtype=np.int64), np.zeros(0, dtype=np.int64)
    if not sp.issparse(exclude):
        raise TypeError("exclude must be a scipy sparse users x items matrix, got %s" % type(exclude).__name__)
    if exclude.shape != (n_users, n_items):
        raise ValueError("exclude has shape %s, the tables give %d users x %d items"
                         % (exclude.shape, n_users, n_items))
    csr = exclude.tocsr(copy=True)
    csr.sum_duplicates()
    return csr.indptr.astype(np.int64), csr.indices.astype(np.int64)


def two_stage_top_k(scores, blocks, k, block_max):
    """Exact top-k of ``scores`` (a view of ``blocks`` [n_blocks, width], padded with -inf).

    ``block_max`` is a preallocated float32 tensor [n_blocks] (torch's row maximum is several
    times faster than numpy's on short rows).  Returns (values, positions), best first."""
    n_blocks, width = blocks.shape
    if n_blocks <= k:  # too few blocks to prune: one partition of every score
        candidates = blocks.ravel()
        best = np.argpartition(candidates, len(candidates) - k)[len(candidates) - k:]
        best = best[np.argsort(-candidates[best], kind="stable")]
        return candidates[best], best
    torch.amax(torch.from_numpy(blocks), dim=1, out=block_max)
    maxima = block_max.numpy()
    chosen = np.argpartition(maxima, n_blocks - k)[n_blocks - k:]
    candidates = blocks[chosen].ravel()
    # each chosen block holds a score >= the smallest chosen maximum, so the k best are among
    # the candidates at or above it (usually little more than k of them)
    (best,) = np.nonzero(candidates >= maxima[chosen].min())
    best = best[np.argsort(-candidates[best], kind="stable")[:k]]
    return candidates[best], chosen[best // width] * width + best % width


class Recommender:
    """Top-k requests (one user at a time) and batches (many users) over prepared tables.

    Build it once (:meth:`from_model`, :meth:`from_vectors` or :meth:`load` of exported
    vectors) and call :meth:`request` per incoming user.  Scores are dot products of the user
    and item rows; item 0 (RecBole's padding id) is never returned when ``skip_item_zero``.
    """

    def __init__(self, user_vectors, item_vectors, exclude=None, k=20, skip_item_zero=True, kernel=None,
                 user_tokens=None, item_tokens=None):
        users = np.ascontiguousarray(_as_numpy(user_vectors, "user_vectors"), dtype=np.float32)
        items = np.ascontiguousarray(_as_numpy(item_vectors, "item_vectors"), dtype=np.float32)
        if users.ndim != 2 or items.ndim != 2 or users.shape[1] != items.shape[1]:
            raise ValueError("user_vectors %s and item_vectors %s must be [n, d] tables of one width d"
                             % (users.shape, items.shape))
        self.n_users, self.n_items = users.shape[0], items.shape[0]
        self.skip_item_zero = bool(skip_item_zero)
        self.indptr, self.indices = exclusion_index(exclude, self.n_users, self.n_items)
        room = self.n_items - np.diff(self.indptr)
        if self.skip_item_zero:  # item 0 is never recommended, excluded or not
            room -= ~self._excludes_item_zero()
        self._room = room
        self.k = self._check_k(k)
        self.user_vectors = users
        self.user_tokens, self.item_tokens = user_tokens, item_tokens
        self.block = block_width(self.n_items, self.k)
        self.n_blocks = -(-self.n_items // self.block)
        self._local = threading.local()
        self.kernel_seconds = {}
        if kernel is None:
            kernel = self._fastest_kernel(items)
        elif kernel not in _KERNEL_FUNCTIONS:
            raise ValueError("kernel=%r: choose one of %s" % (kernel, ", ".join(KERNELS)))
        self.kernel = kernel
        self._transposed, self._product = _KERNEL_FUNCTIONS[kernel]
        self.items = np.ascontiguousarray(items.T) if self._transposed else items

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_vectors(cls, user_vectors, item_vectors, exclude=None, **kwargs):
        """From user and item tables (numpy arrays or tensors), e.g. exported student vectors."""
        return cls(user_vectors, item_vectors, exclude, **kwargs)

    @classmethod
    def from_model(cls, model, exclude=None, **kwargs):
        """From a trained dot-product backbone (BPR, LightGCN's propagated tables) or a plugin
        model (its student).  ``exclude``: e.g. ``dataset.inter_matrix(form='csr')``."""
        from recbole_derrd.serving.vectors import score_tables_of

        user_table, item_table = score_tables_of(model)
        return cls(user_table, item_table, exclude, **kwargs)

    @classmethod
    def load(cls, path, **kwargs):
        """From a vectors file written by :func:`recbole_derrd.serving.vectors.export_vectors`."""
        from recbole_derrd.serving.vectors import load_vectors

        vectors = load_vectors(path)
        exclude = sp.csr_matrix((np.ones(len(vectors["exclude_indices"]), dtype=np.float32),
                                 vectors["exclude_indices"], vectors["exclude_indptr"]),
                                shape=(len(vectors["user_vectors"]), len(vectors["item_vectors"])))
        return cls(vectors["user_vectors"], vectors["item_vectors"], exclude,
                   user_tokens=vectors["user_tokens"], item_tokens=vectors["item_tokens"], **kwargs)

    @property
    def item_vectors(self):
        """The item table [n_items, d] (a view of the kernel's layout, not a copy)."""
        return self.items.T if self._transposed else self.items

    # ------------------------------------------------------------------ serving
    def request(self, user, k=None):
        """The top ``k`` items of one internal user id: (scores float32 [k], items int64 [k]), best first."""
        k = self.k if k is None else self._check_k(k)
        if not 0 <= user < self.n_users:
            raise IndexError("user %r is not an internal user id (0..%d)" % (user, self.n_users - 1))
        if self._room[user] < k:
            raise ValueError("user %d has %d recommendable items, fewer than k=%d"
                             % (user, self._room[user], k))
        buffers = self._buffers()
        scores = buffers[0]
        self._product(self.user_vectors[user], self.items, scores)
        if self.skip_item_zero:
            scores[0] = -np.inf
        scores[self.indices[self.indptr[user]:self.indptr[user + 1]]] = -np.inf
        return two_stage_top_k(scores, buffers[1], k, buffers[2])

    def scores(self, user, out=None):
        """One user's raw scores over the catalogue (float32 [n_items], nothing masked), computed
        with the chosen kernel into ``out`` when given."""
        out = np.empty(self.n_items, dtype=np.float32) if out is None else out
        self._product(self.user_vectors[user], self.items, out)
        return out

    def request_token(self, token, k=None):
        """Like :meth:`request` for an external user token; returns item tokens."""
        if self.user_tokens is None or self.item_tokens is None:
            raise ValueError("this recommender has no id maps; build it with load() of exported vectors")
        if not hasattr(self, "_user_index"):
            self._user_index = {str(t): i for i, t in enumerate(self.user_tokens)}
        if str(token) not in self._user_index:
            raise KeyError("unknown user token %r" % (token,))
        scores, items = self.request(self._user_index[str(token)], k)
        return scores, self.item_tokens[items]

    def batch(self, users, k=None, user_block=None):
        """Top ``k`` items of many users (blocked scoring, running top-k): tensors [U, k]."""
        from recbole_derrd.serving.inference import top_k_items

        k = self.k if k is None else self._check_k(k)
        users = np.asarray(users, dtype=np.int64)
        items = torch.from_numpy(self.item_vectors)
        exclude = sp.csr_matrix((np.ones(len(self.indices), dtype=np.float32), self.indices, self.indptr),
                                shape=(self.n_users, self.n_items))
        return top_k_items(torch.from_numpy(self.user_vectors[users]), items, k, exclude, users,
                           skip_item_zero=self.skip_item_zero, user_block=user_block)

    # ------------------------------------------------------------------ internals
    def _buffers(self):
        """(scores [n_items] view, blocks [n_blocks, block], block maxima) of this thread."""
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            padded = np.full(self.n_blocks * self.block, -np.inf, dtype=np.float32)
            buffers = (padded[:self.n_items], padded.reshape(self.n_blocks, self.block),
                       torch.empty(self.n_blocks, dtype=torch.float32))
            self._local.buffers = buffers
        return buffers

    def _check_k(self, k):
        limit = self.n_items - int(self.skip_item_zero)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= limit:
            raise ValueError("k=%r must be an integer between 1 and the number of items (%d)" % (k, limit))
        return int(k)

    def _excludes_item_zero(self):
        """Per user, whether item 0 is among their excluded items."""
        rows = np.repeat(np.arange(self.n_users), np.diff(self.indptr))
        mask = np.zeros(self.n_users, dtype=bool)
        mask[rows[self.indices == 0]] = True
        return mask

    def _fastest_kernel(self, items, repeats=9):
        """Time every kernel on the prepared tables (a few real user rows) and keep the fastest."""
        rng = np.random.default_rng(0)
        rows = self.user_vectors[rng.integers(0, self.n_users, size=repeats)]
        out = np.empty(self.n_items, dtype=np.float32)
        for name in KERNELS:
            transposed, product = _KERNEL_FUNCTIONS[name]
            table = np.ascontiguousarray(items.T) if transposed else items
            product(rows[0], table, out)  # warm-up
            times = []
            for row in rows:
                start = time.perf_counter()
                product(row, table, out)
                times.append(time.perf_counter() - start)
            self.kernel_seconds[name] = float(np.median(times))
        return min(self.kernel_seconds, key=self.kernel_seconds.get)


def _as_numpy(table, name):
    if isinstance(table, torch.Tensor):
        return table.detach().cpu().float().numpy()
    if isinstance(table, np.ndarray):
        return table
    raise TypeError("%s must be a numpy array or a tensor, got %s" % (name, type(table).__name__))
