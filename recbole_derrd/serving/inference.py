"""Top-k recommendation for a trained student (or teacher): the reason for distilling.

``scores = U @ V.T; topk`` materialises a users x items score matrix: memory-bound, and
hundreds of MB for a mid-size catalogue.  :func:`top_k_items` scores a block of users against
a block of items at a time (in the matrix layout that is fastest for a narrow embedding) and
keeps a running top-k per user, so memory stays ``user_block x item_block`` whatever the
catalogue size.  :func:`recommend` applies it to any supported RecBole backbone (and to the
plugin's models, which predict with their student), masking padding and training items.
One request at a time (a server) goes through :class:`recbole_derrd.serving.requests.Recommender`,
which prepares everything that does not depend on the request once.
"""

import numpy as np
import torch

from recbole_derrd.backbones import adapter_for
from recbole_derrd.distillation.ranking import mask_pairs

ITEM_BLOCK = 1 << 15


def default_user_block(dim):
    """Users per score block: small for narrow embeddings, whose products are bound by writing
    the score block (a block that stays in cache is then re-read by top-k for free), large for
    wide ones, whose products need the rows for efficiency.  Measured on CiteULike shapes
    (benchmarks/inference.py)."""
    if dim <= 32:
        return 32
    if dim <= 64:
        return 64
    return 256


@torch.no_grad()
def top_k_items(user_vectors, item_vectors, k, exclude=None, user_ids=None, skip_item_zero=True,
                user_block=None, item_block=ITEM_BLOCK):
    """Per row of ``user_vectors`` [U, d], the ``k`` best items of ``item_vectors`` [I, d] by dot product.

    Args:
        exclude: optional scipy CSR (users x items) of pairs never to recommend (training items).
        user_ids: numpy ids of the rows in ``exclude`` (default: 0..U-1).
        skip_item_zero: never return item 0 (RecBole's padding item).
        user_block: users per score block (default: :func:`default_user_block`).
    Returns:
        (scores [U, k] float, items [U, k] int64), best first.
    """
    n_users, n_items = user_vectors.shape[0], item_vectors.shape[0]
    if not 1 <= k <= n_items - int(skip_item_zero):
        raise ValueError("k=%d must be between 1 and the number of items (%d)" % (k, n_items))
    user_vectors, item_vectors = user_vectors.detach(), item_vectors.detach()
    user_block = user_block or default_user_block(user_vectors.shape[1])
    if user_ids is None:
        user_ids = np.arange(n_users)
    excluded = exclude[user_ids].tocsr() if exclude is not None else None  # row i: user_ids[i]
    # Many users: one transposed copy of the item table makes every block a [u, d] @ [d, i]
    # product into a reused buffer; a few users: [i, d] @ [d, u] reads the table as it is.
    few = n_users < 32
    items_t = None if few else item_vectors.t().contiguous()
    buffer = None if few else user_vectors.new_empty(min(user_block, n_users), min(item_block, n_items))
    out_scores = user_vectors.new_empty(n_users, k)
    out_items = torch.empty(n_users, k, dtype=torch.long, device=user_vectors.device)
    for start in range(0, n_users, user_block):
        users = user_vectors[start:start + user_block]
        best_scores = best_items = None
        for item_start in range(0, n_items, item_block):
            width = min(item_block, n_items - item_start)
            if few:
                scores = torch.mm(item_vectors[item_start:item_start + width], users.t()).t().contiguous()
            else:
                scores = torch.mm(users, items_t[:, item_start:item_start + width],
                                  out=buffer[:len(users), :width])
            if skip_item_zero and item_start == 0:
                scores[:, 0] = -torch.inf
            if excluded is not None:
                mask_pairs(scores, excluded, start, item_start)
            values, index = torch.topk(scores, min(k, width), dim=1)
            index += item_start
            if best_scores is not None:
                values, pick = torch.topk(torch.cat([best_scores, values], 1), k, dim=1)
                index = torch.gather(torch.cat([best_items, index], 1), 1, pick)
            best_scores, best_items = values, index
        out_scores[start:start + len(users)] = best_scores[:, :k]
        out_items[start:start + len(users)] = best_items[:, :k]
    return out_scores, out_items


@torch.no_grad()
def recommend(model, users, k=20, exclude=None, user_block=None):
    """Top-k item ids for ``users`` from a trained RecBole model (student, teacher or plugin model).

    Args:
        model: a general recommender with an adapter (any, see docs/backbones.md) or a
            distilled model (its student).
        users: sequence or LongTensor of internal user ids.
        exclude: optional scipy CSR of pairs to skip, e.g. ``dataset.inter_matrix(form='csr')``.
    Returns:
        (scores [len(users), k], items [len(users), k]) tensors, best first.
    """
    backbone = getattr(model, "student", model)
    if getattr(adapter_for(backbone), "sequential", False):
        raise TypeError("%s is a sequential recommender: it recommends from an item sequence, not a user id; "
                        "use recommend_next(model, user_histories(dataset, users))" % type(backbone).__name__)
    was_training = backbone.training
    backbone.eval()
    try:
        adapter = adapter_for(backbone)
        users = torch.as_tensor(users, dtype=torch.long, device=backbone.device)
        user_ids = users.cpu().numpy()
        tables = adapter.score_tables()
        if tables is not None:
            user_table, item_table = tables
            return top_k_items(user_table.index_select(0, users), item_table, k, exclude, user_ids,
                               user_block=user_block)
        parts_scores, parts_items = [], []
        user_block = user_block or 256
        excluded = exclude[user_ids].tocsr() if exclude is not None else None
        for start in range(0, len(users), user_block):
            block = users[start:start + user_block]
            scores = adapter.all_scores(block).float()
            scores[:, 0] = -torch.inf
            if excluded is not None:
                mask_pairs(scores, excluded, start)
            values, items = torch.topk(scores, k, dim=1)
            parts_scores.append(values)
            parts_items.append(items)
        return torch.cat(parts_scores), torch.cat(parts_items)
    finally:
        backbone.train(was_training)


# --------------------------------------------------------------------------- sequential backbones
def user_histories(dataset, users):
    """Each user's item sequence as a sequential dataset holds it (internal ids, oldest first):
    the prefix and target of the user's last row, i.e. everything up to that row's target
    (train data: the training sequence; test data: up to the test item).  At most
    ``MAX_ITEM_LIST_LENGTH`` items are kept before the target, as RecBole keeps them."""
    feat = dataset.inter_feat
    seq_field = dataset.config["ITEM_ID_FIELD"] + dataset.config["LIST_SUFFIX"]
    len_field = dataset.config["ITEM_LIST_LENGTH_FIELD"]
    all_users = feat[dataset.uid_field].cpu().numpy()
    last = {int(u): row for row, u in enumerate(all_users)}  # rows are ordered in time per user
    histories = []
    for user in users:
        if int(user) not in last:
            raise KeyError("user %d has no row in this dataset" % int(user))
        row = last[int(user)]
        length = int(feat[len_field][row])
        histories.append(feat[seq_field][row, :length].tolist() + [int(feat[dataset.iid_field][row])])
    return histories


@torch.no_grad()
def recommend_next(model, histories, k=20, exclude_history=False, block=256, users=None):
    """Top-k next items after each item sequence, from a sequential model (or a distilled one:
    its student).

    Args:
        histories: item-id sequences (internal ids, oldest first), e.g. :func:`user_histories`;
            each is cut to its last ``MAX_ITEM_LIST_LENGTH`` items, as RecBole's prefixes are.
        exclude_history: never recommend an item of the sequence itself.
        block: sequences scored per pass ([block, n_items] scores at a time).
        users: the sequences' internal user ids, for models that read the user too (Caser, HRM,
            SHAN, FOSSIL, NPE, HGN, FPMC, TransRec).
    Returns:
        (scores [len(histories), k], items [len(histories), k]) tensors, best first.
    """
    from recbole.data.interaction import Interaction

    backbone = getattr(model, "student", model)
    adapter = adapter_for(backbone)
    if not getattr(adapter, "sequential", False):
        raise TypeError("%s is not a sequential recommender: use recommend(model, users)" % type(backbone).__name__)
    length = backbone.max_seq_length
    if not 1 <= k <= backbone.n_items - 1:
        raise ValueError("k=%d must be between 1 and the number of items (%d)" % (k, backbone.n_items - 1))
    was_training = backbone.training
    backbone.eval()
    try:
        parts_scores, parts_items = [], []
        for start in range(0, len(histories), block):
            chunk = [list(h)[-length:] for h in histories[start:start + block]]
            if any(not h for h in chunk):
                raise ValueError("an empty history has no next item to predict")
            seq = torch.zeros(len(chunk), length, dtype=torch.long)
            for row, history in enumerate(chunk):
                seq[row, :len(history)] = torch.as_tensor(history)
            fields = {backbone.ITEM_SEQ: seq, backbone.ITEM_SEQ_LEN: torch.tensor([len(h) for h in chunk])}
            if users is not None:
                fields[backbone.USER_ID] = torch.as_tensor(list(users[start:start + block]), dtype=torch.long)
            interaction = Interaction(fields).to(backbone.device)
            adapter.bind(interaction)
            scores = adapter.all_scores(torch.arange(len(chunk), device=backbone.device)).float()
            scores[:, 0] = -torch.inf
            if exclude_history:
                scores.scatter_(1, seq.to(scores.device), -torch.inf)
            values, items = torch.topk(scores, k, dim=1)
            parts_scores.append(values)
            parts_items.append(items)
        adapter.bind(None)
        return torch.cat(parts_scores), torch.cat(parts_items)
    finally:
        backbone.train(was_training)
