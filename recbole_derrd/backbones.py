"""Backbone adapters: what distillation needs to know about a RecBole model.

DE distils *representations* and RRD distils *scores*, so the plugin only needs, for any
backbone, (a) a user and an item representation and (b) scores of chosen (user, item) pairs
and of the full catalogue.  An adapter answers those questions for one RecBole model class;
adding a backbone means adding one small class to :data:`ADAPTERS`.
"""

import torch


def gathered_dot(user_table, item_table, users, items):
    """[U] users, [U, X] items -> [U, X] dot products of their rows in the two tables.

    ``index_select`` + multiply-sum instead of ``nn.Embedding`` + ``bmm``: on CPU the
    embedding's backward sorts every index and a batch of [X, d] @ [d, 1] products is slow;
    this form is several times faster for RRD's [users, K + L] score lists.
    """
    user_e = user_table.index_select(0, users)  # [U, d]
    item_e = item_table.index_select(0, items.reshape(-1)).view(*items.shape, -1)  # [U, X, d]
    return (item_e * user_e.unsqueeze(1)).sum(-1)


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
    PAIRS_PER_PASS = 1 << 18

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
