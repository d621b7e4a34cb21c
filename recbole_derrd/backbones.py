"""Backbone adapters: what distillation needs to know about a RecBole model.

DE distils *representations* and RRD distils *scores*, so the plugin only needs, for any
backbone, (a) a user and an item representation and (b) scores of chosen (user, item) pairs
and of the full catalogue.  An adapter answers those questions for one RecBole model class;
adding a backbone means adding one small class to :data:`ADAPTERS`.
"""

import torch
import torch.nn.functional as F

from recbole_derrd.distillation.workspace import ScratchPool


def gathered_dot(user_table, item_table, users, items):
    """[U] users, [U, X] items -> [U, X] dot products of their rows in the two tables.

    RRD scores every batch user against its K + L listed items (~74k pairs per CiteULike
    batch), which makes this the hot spot of RRD; see :class:`_GatheredDot` for the backward.
    """
    return _GatheredDot.apply(user_table, item_table, users, items)


class _GatheredDot(torch.autograd.Function):
    """Gather + multiply-sum forward; a backward without autograd's pass over [U, X, d].

    The user gradient sum_x g[u, x] V[i(u, x)] is one weighted ``embedding_bag`` (no [U, X, d]
    tensor); the item gradient is one ``index_add_`` of the outer products g[u, x] U[u].  The
    two [U * X, d] temporaries (gathered rows, outer products) live in a scratch pool
    (measured against autograd through ``index_select``: benchmarks/RESULTS.md).
    """

    pool = ScratchPool()

    @staticmethod
    def forward(ctx, user_table, item_table, users, items):
        pool = _GatheredDot.pool
        user_e = user_table.index_select(0, users)  # [U, d]
        flat = items.reshape(-1)
        item_e = torch.index_select(item_table, 0, flat, out=pool.take((len(flat), item_table.shape[1]),
                                                                      item_table))
        scores = torch.linalg.vecdot(item_e.view(*items.shape, -1), user_e.unsqueeze(1))
        pool.give(item_e)
        ctx.save_for_backward(user_table, item_table, users, items, user_e)
        return scores

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        user_table, item_table, users, items, user_e = ctx.saved_tensors
        grad = grad.to(item_table.dtype)
        grad_users = grad_items = None
        if ctx.needs_input_grad[0]:
            summed = F.embedding_bag(items.reshape(-1, items.shape[-1]), item_table,
                                     per_sample_weights=grad.reshape(-1, items.shape[-1]), mode="sum")
            grad_users = torch.zeros_like(user_table).index_add_(0, users, summed.view(*users.shape, -1))
        if ctx.needs_input_grad[1]:
            pool = _GatheredDot.pool
            outer = pool.take((*items.shape, user_e.shape[-1]), user_e)
            torch.mul(grad.unsqueeze(-1), user_e.unsqueeze(1), out=outer)
            grad_items = torch.zeros_like(item_table).index_add_(0, items.reshape(-1),
                                                                 outer.view(-1, user_e.shape[-1]))
            pool.give(outer)
        return grad_users, grad_items, None, None


class BackboneAdapter:
    """Interface over a RecBole general recommender used as teacher or student."""

    #: RecBole model names this adapter understands.
    model_names = ()

    def __init__(self, model):
        self.model = model

    @property
    def user_dim(self):
        raise NotImplementedError

    @property
    def item_dim(self):
        raise NotImplementedError

    def begin_step(self):
        """Forget anything cached from the previous training step (or from other weights)."""

    def user_repr(self, users):
        """[n] user ids -> [n, user_dim] representation distilled by DE."""
        raise NotImplementedError

    def item_repr(self, items):
        """[n] item ids -> [n, item_dim] representation distilled by DE."""
        raise NotImplementedError

    def score(self, users, items):
        """[U] users and [U, X] items -> [U, X] ranking scores (used by RRD)."""
        raise NotImplementedError

    def all_scores(self, users):
        """[U] users -> [U, n_items] scores over the whole catalogue (teacher ranking)."""
        raise NotImplementedError

    def item_side_score(self, items, users):
        """[I] items and [I, Y] users -> [I, Y] ranking scores (the item-side terms, e.g. IR).

        The default scores the (user, item) pairs one by one through :meth:`score`; adapters
        whose scores are dot products swap the two tables instead."""
        flat_items = items.unsqueeze(1).expand_as(users).reshape(-1, 1)
        return self.score(users.reshape(-1), flat_items).view(users.shape)

    def score_tables(self):
        """(user table [n_users, d], item table [n_items, d]) when scores are their dot
        products, else None (then inference goes through :meth:`all_scores`)."""
        return None


class MFAdapter(BackboneAdapter):
    """Matrix factorisation: the embeddings are the representations, scores are dot products."""

    model_names = ("BPR",)

    @property
    def user_dim(self):
        return self.model.user_embedding.embedding_dim

    @property
    def item_dim(self):
        return self.model.item_embedding.embedding_dim

    def user_repr(self, users):
        return self.model.user_embedding(users)

    def item_repr(self, items):
        return self.model.item_embedding(items)

    def score(self, users, items):
        return gathered_dot(self.model.user_embedding.weight, self.model.item_embedding.weight,
                            users, items)

    def all_scores(self, users):
        return self.model.user_embedding(users) @ self.model.item_embedding.weight.t()

    def item_side_score(self, items, users):
        return gathered_dot(self.model.item_embedding.weight, self.model.user_embedding.weight,
                            items, users)

    def score_tables(self):
        return self.model.user_embedding.weight, self.model.item_embedding.weight


class LightGCNAdapter(MFAdapter):
    """LightGCN: the representations are the propagated (layer-averaged) embeddings.

    One graph propagation serves every call until :meth:`begin_step` (the student calls it at
    each training step; the frozen teacher once, after its weights are loaded).
    """

    model_names = ("LightGCN",)

    def __init__(self, model):
        super().__init__(model)
        self._cache = None

    def begin_step(self):
        self._cache = None

    def _propagated(self):
        if self._cache is None:
            self._cache = self.model.forward()
        return self._cache

    def user_repr(self, users):
        return self._propagated()[0][users]

    def item_repr(self, items):
        return self._propagated()[1][items]

    def score(self, users, items):
        user_all, item_all = self._propagated()
        return gathered_dot(user_all, item_all, users, items)

    def all_scores(self, users):
        user_all, item_all = self._propagated()
        return user_all[users] @ item_all.t()

    def item_side_score(self, items, users):
        user_all, item_all = self._propagated()
        return gathered_dot(item_all, user_all, items, users)

    def score_tables(self):
        return self._propagated()


class NeuMFAdapter(BackboneAdapter):
    """NeuMF: the representation is the concatenation [GMF embedding, MLP embedding].

    Those two embeddings are everything NeuMF learns per user or item (its MLP and output
    layer are shared by all pairs), so they are what a student must carry over; scores are
    NeuMF's logits (the pre-sigmoid output, which ranks the same as ``predict``).
    """

    model_names = ("NeuMF",)
    #: (user, item) pairs scored per forward pass when ranking the whole catalogue.
    PAIRS_PER_PASS = 1 << 16

    @property
    def user_dim(self):
        return self.model.user_mf_embedding.embedding_dim + self.model.user_mlp_embedding.embedding_dim

    @property
    def item_dim(self):
        return self.model.item_mf_embedding.embedding_dim + self.model.item_mlp_embedding.embedding_dim

    def user_repr(self, users):
        return torch.cat([self.model.user_mf_embedding(users), self.model.user_mlp_embedding(users)], -1)

    def item_repr(self, items):
        return torch.cat([self.model.item_mf_embedding(items), self.model.item_mlp_embedding(items)], -1)

    def score(self, users, items):
        flat_users = users.unsqueeze(1).expand_as(items).reshape(-1)
        return self.model.forward(flat_users, items.reshape(-1)).view(items.shape)

    def all_scores(self, users):
        """NeuMF logits of ``users`` against every item, with the MLP's first layer split.

        W [u; i] + b = (W_u u + b) + W_i i: the user and item halves of the first layer are
        applied once per user and once per item instead of once per pair, which removes
        the largest product of NeuMF's per-pair work (e.g. 4/5 of it for mlp 250 -> [250,
        125]); the GMF part is one [users, items] product.  Dropout is the identity in
        eval mode, which this needs: a model in training mode is scored pair by pair.
        """
        model = self.model
        n_items = model.n_items
        if model.training:
            return self._all_scores_pairwise(users)
        weight, bias = model.predict_layer.weight[0], model.predict_layer.bias
        scores = bias.expand(len(users), n_items).clone()
        mf_size = model.mf_embedding_size if model.mf_train else 0
        if model.mf_train:
            user_mf = model.user_mf_embedding(users) * weight[:mf_size]
            scores.addmm_(user_mf, model.item_mf_embedding.weight.t())
        if model.mlp_train:
            modules = list(model.mlp_layers.mlp_layers)
            first = next(i for i, m in enumerate(modules) if isinstance(m, torch.nn.Linear))
            layer, rest = modules[first], torch.nn.Sequential(*modules[first + 1:])
            half = model.mlp_embedding_size
            user_part = torch.addmm(layer.bias, model.user_mlp_embedding(users), layer.weight[:, :half].t())
            item_part = model.item_mlp_embedding.weight @ layer.weight[:, half:].t()
            w_mlp = weight[mf_size:]
            step = max(1, self.PAIRS_PER_PASS // n_items)
            for start in range(0, len(users), step):
                block = user_part[start:start + step]
                hidden = (block.unsqueeze(1) + item_part.unsqueeze(0)).view(-1, item_part.shape[1])
                scores[start:start + step] += (rest(hidden) @ w_mlp).view(len(block), n_items)
        return scores

    def _all_scores_pairwise(self, users):
        n_items = self.model.n_items
        all_items = torch.arange(n_items, device=users.device)
        step = max(1, self.PAIRS_PER_PASS // n_items)
        rows = [self.score(users[i:i + step], all_items.expand(len(users[i:i + step]), n_items))
                for i in range(0, len(users), step)]
        return torch.cat(rows, 0)


ADAPTERS = {name: cls for cls in (MFAdapter, LightGCNAdapter, NeuMFAdapter) for name in cls.model_names}


def supported_backbones():
    return sorted(ADAPTERS)


def check_backbone(name, key):
    """Raise a clear error when config ``key`` names a backbone without an adapter."""
    if name not in ADAPTERS:
        raise ValueError(
            "%s=%r is not a supported backbone; supported: %s"
            % (key, name, ", ".join(supported_backbones()))
        )


def adapter_for(model):
    name = type(model).__name__
    check_backbone(name, "model")
    return ADAPTERS[name](model)
