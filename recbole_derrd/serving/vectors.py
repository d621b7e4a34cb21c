"""The student as plain vectors: serve it with numpy alone, a vector index, or another stack.

A dot-product student (BPR, LightGCN after propagation) is fully described, for serving, by a
user table, an item table and the id maps between RecBole's internal ids and the dataset's
tokens.  :func:`export_vectors` writes those, plus each user's training items (to leave out of
their recommendations), into one ``.npz`` file of plain arrays: it loads with
``numpy.load(path, allow_pickle=False)`` in any process, without torch, RecBole or this plugin.

Arrays: ``user_vectors`` [n_users, d] and ``item_vectors`` [n_items, d] float32 (row = internal
id; row 0 is RecBole's padding), ``user_tokens`` / ``item_tokens`` (internal id -> token, str),
``exclude_indptr`` / ``exclude_indices`` (CSR of the training items per internal user id),
``backbone`` (the model name) and ``format_version``.
"""

import os

import numpy as np
import torch

from recbole_derrd.atomic import atomic_write

FORMAT_VERSION = 1
ARRAYS = ("user_vectors", "item_vectors", "user_tokens", "item_tokens", "exclude_indptr",
          "exclude_indices", "backbone", "format_version")


def backbone_of(model):
    """The scoring backbone: a plugin model's student, or the model itself."""
    return getattr(model, "student", model)


@torch.no_grad()
def score_tables_of(model):
    """(user table, item table) whose dot products are ``model``'s scores, as float32 tensors.

    Raises ValueError for backbones that do not score by a dot product of two tables (NeuMF's
    MLP), which cannot be served as vectors."""
    from recbole_derrd.backbones import adapter_for

    backbone = backbone_of(model)
    was_training = backbone.training
    backbone.eval()
    try:
        tables = adapter_for(backbone).score_tables()
    finally:
        backbone.train(was_training)
    if tables is None:
        raise ValueError("%s does not score by a dot product of a user and an item table, so it "
                         "cannot be served as vectors; use recommend() or stock RecBole"
                         % type(backbone).__name__)
    return tuple(t.detach().cpu().float().contiguous() for t in tables)


def export_vectors(model, dataset, path):
    """Write ``model``'s (or its student's) serving vectors and id maps to ``path`` (.npz).

    ``dataset``: the RecBole dataset the model was trained on (its training split, whose
    interactions are each user's items to leave out: ``train_data._dataset``)."""
    user_table, item_table = score_tables_of(model)
    exclude = dataset.inter_matrix(form="csr")
    if exclude.shape != (user_table.shape[0], item_table.shape[0]):
        raise ValueError("dataset has %d users x %d items, the model's tables %d x %d"
                         % (exclude.shape + (user_table.shape[0], item_table.shape[0])))
    exclude.sum_duplicates()
    arrays = {
        "user_vectors": user_table.numpy(), "item_vectors": item_table.numpy(),
        "user_tokens": np.asarray(dataset.field2id_token[dataset.uid_field]).astype(str),
        "item_tokens": np.asarray(dataset.field2id_token[dataset.iid_field]).astype(str),
        "exclude_indptr": exclude.indptr.astype(np.int64), "exclude_indices": exclude.indices.astype(np.int64),
        "backbone": np.asarray(type(backbone_of(model)).__name__), "format_version": np.asarray(FORMAT_VERSION),
    }
    return atomic_write(path, lambda stream: np.savez(stream, **arrays))


def load_vectors(path):
    """The arrays of an exported vectors file, checked (no pickled objects are read)."""
    if not os.path.isfile(path):
        raise FileNotFoundError("vectors file %s does not exist" % path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in ARRAYS if name not in data.files]
            if missing:
                raise ValueError("vectors file %s lacks %s" % (path, ", ".join(missing)))
            arrays = {name: data[name] for name in ARRAYS}
    except (OSError, ValueError) as error:
        if isinstance(error, ValueError) and str(error).startswith("vectors file"):
            raise
        raise ValueError("vectors file %s is not a readable .npz of plain arrays: %s" % (path, error)) from None
    if int(arrays["format_version"]) != FORMAT_VERSION:
        raise ValueError("vectors file %s has format_version %s, this plugin reads %d"
                         % (path, arrays["format_version"], FORMAT_VERSION))
    users, items = arrays["user_vectors"], arrays["item_vectors"]
    indptr, indices = arrays["exclude_indptr"], arrays["exclude_indices"]
    consistent = (users.ndim == 2 and items.ndim == 2 and users.shape[1] == items.shape[1]
                  and len(arrays["user_tokens"]) == len(users) and len(arrays["item_tokens"]) == len(items)
                  and len(indptr) == len(users) + 1 and indptr[0] == 0 and indptr[-1] == len(indices)
                  and np.all(np.diff(indptr) >= 0)
                  and (len(indices) == 0 or (indices.min() >= 0 and indices.max() < len(items))))
    if not consistent:
        raise ValueError("vectors file %s has inconsistent shapes (tables, id maps or training items)" % path)
    return arrays
