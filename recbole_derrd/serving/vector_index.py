"""Approximate top-k with a vector index (faiss, optional): serving the student outside the plugin.

An exact request reads the whole item table; a graph index (HNSW) reads a few hundred item
vectors instead, at the price of recall.  :class:`ItemIndex` puts the student's item vectors
(without RecBole's padding item 0) in a faiss inner-product HNSW index and answers a request
with the same contract as :meth:`recbole_derrd.serving.requests.Recommender.request`: the best
``k`` items outside the user's training items.  The index is asked for ``k`` plus the number
of the user's training items, so that ``k`` remain after they are dropped.

``faiss-cpu`` is an optional dependency: ``pip install "recbole-derrd[faiss]"``.
"""

import numpy as np


def require_faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("the vector index needs faiss: pip install \"recbole-derrd[faiss]\" "
                          "(or pip install faiss-cpu)") from None
    return faiss


class ItemIndex:
    """faiss HNSW index (inner product) over items 1..n-1 of an item table.

    Args:
        item_vectors: [n_items, d] float array (row = internal item id; row 0 is padding).
        neighbours: HNSW graph degree ``M`` (more: better recall, more memory, slower build).
        ef_construction / ef_search: candidate list sizes when building / searching (raised to
            the number of results asked for when that is larger).
    """

    def __init__(self, item_vectors, neighbours=32, ef_construction=200, ef_search=128):
        faiss = require_faiss()
        items = np.ascontiguousarray(np.asarray(item_vectors, dtype=np.float32)[1:])
        if items.ndim != 2 or len(items) == 0:
            raise ValueError("item_vectors must be an [n_items, d] table with at least one real item")
        self._faiss = faiss
        self.ef_search = int(ef_search)
        self.index = faiss.IndexHNSWFlat(items.shape[1], int(neighbours), faiss.METRIC_INNER_PRODUCT)
        self.index.hnsw.efConstruction = int(ef_construction)
        self.index.add(items)
        self.n_items = len(items) + 1

    def search(self, user_vector, k, excluded=()):
        """(scores [k], items [k]) for one user vector, leaving out ``excluded`` item ids."""
        excluded = np.asarray(excluded, dtype=np.int64)
        wanted = min(k + len(excluded), self.n_items - 1)
        params = self._faiss.SearchParametersHNSW(efSearch=max(self.ef_search, wanted))
        scores, positions = self.index.search(np.asarray(user_vector, dtype=np.float32).reshape(1, -1),
                                              wanted, params=params)
        items = positions[0] + 1  # index position p holds item p + 1; -1 (not found) becomes 0
        keep = (positions[0] >= 0) & ~np.isin(items, excluded)
        return scores[0][keep][:k], items[keep][:k]

    @classmethod
    def for_recommender(cls, recommender, **kwargs):
        """An index over a :class:`~recbole_derrd.serving.requests.Recommender`'s item table."""
        return cls(recommender.item_vectors, **kwargs)


def search_request(index, recommender, user, k=None):
    """One request through ``index`` with ``recommender``'s user table and training items."""
    k = recommender.k if k is None else k
    excluded = recommender.indices[recommender.indptr[user]:recommender.indptr[user + 1]]
    return index.search(recommender.user_vectors[user], k, excluded)


def recall_at_k(approximate_items, exact_items):
    """Mean over requests of |approx top-k & exact top-k| / k."""
    hits = [len(set(a.tolist()) & set(e.tolist())) / len(e) for a, e in zip(approximate_items, exact_items)]
    return float(np.mean(hits))
