"""Backbone adapters: what distillation needs to know about a RecBole model.

DE distils *representations* and the ranking terms (RRD, RD, CD, IR) distil *scores*, so the
plugin only needs, for any backbone, (a) a user and an item representation and (b) scores of
chosen (user, item) pairs and of the full catalogue.  An adapter answers those questions for one
RecBole model class:

* :class:`ScoreOnlyAdapter` serves **every** RecBole general recommender through its own
  ``predict`` / ``full_sort_predict``: enough for the ranking terms, as teacher or student;
* :class:`TablesAdapter` and its subclasses serve models whose score is the dot product of a user
  and an item table (BPR, LINE, ENMF, LightGCN and the other propagation models): those tables
  are the representations DE distils;
* :class:`SimpleXAdapter`: SimpleX's normalised user vector (embedding mixed with its history)
  and item embedding, whose dot product is its cosine score;
* :class:`NeuMFAdapter`: NeuMF's two embeddings as the representation, its logits as scores.

:func:`register_adapter` adds an adapter (and, for a user's own model class, the model itself)
without touching this module.  Which RecBole models may take which role, and why the others are
refused, is decided in :mod:`recbole_derrd.backbone_support`.
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
    #: whether :meth:`user_repr` / :meth:`item_repr` exist (DE needs them on both sides)
    has_representations = True
    #: (user, item) pairs per forward pass when the catalogue is scored pair by pair
    PAIRS_PER_PASS = 1 << 16

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

    def pair_scores(self, users, items):
        """[P] users and [P] items -> [P] scores of exactly those pairs (models that score pair
        by pair: NeuMF, the pair networks)."""
        raise NotImplementedError

    def _listed_pair_scores(self, users, items):
        """[U] users and [U, X] items -> [U, X] scores through :meth:`pair_scores`."""
        flat_users = users.unsqueeze(1).expand_as(items).reshape(-1)
        return self.pair_scores(flat_users, items.reshape(-1)).view(items.shape)

    def _all_scores_pairwise(self, users):
        """[U] users -> [U, n_items] through :meth:`pair_scores`, ``PAIRS_PER_PASS`` pairs a pass."""
        n_items = self.model.n_items
        all_items = torch.arange(n_items, device=users.device)
        step = max(1, self.PAIRS_PER_PASS // n_items)
        return torch.cat([self._listed_pair_scores(block, all_items.expand(len(block), n_items))
                          for block in users.split(step)], 0)


class ScoresOnly:
    """Mixin of the adapters that offer scores and no representation (DE refuses them)."""

    has_representations = False
    user_dim = item_dim = None
    #: what a row is, for the message (a user; a sequence prefix)
    row_kind = "user"

    def user_repr(self, rows):
        raise TypeError("%s has no %s representation (it only scores)" % (type(self.model).__name__, self.row_kind))

    item_repr = user_repr


class ScoreOnlyAdapter(ScoresOnly, BackboneAdapter):
    """Any RecBole general recommender, through its own ``predict`` and ``full_sort_predict``.

    The ranking terms need scores only, so this serves every model as a teacher (ItemKNN, EASE,
    SLIM, the autoencoders, ...) and every gradient-trained one as a student.  It offers no
    representations: DE refuses such a model at start-up (:func:`check_terms_fit`).
    """

    #: how chosen pairs are scored: ``"catalogue"`` gathers them from one ``full_sort_predict``
    #: row per user (models that score a user's whole catalogue in one pass: autoencoders,
    #: item-similarity models); ``"pairs"`` calls ``predict`` once per pair (pair models)
    score_by = "catalogue"

    def pair_scores(self, users, items):
        from recbole.data.interaction import Interaction

        scores = self.model.predict(Interaction({self.model.USER_ID: users, self.model.ITEM_ID: items}))
        return scores.to(device=users.device, dtype=torch.float32).view(-1)

    def score(self, users, items):
        if self.score_by == "pairs":
            return self._listed_pair_scores(users, items)
        return self.all_scores(users).gather(1, items)

    def all_scores(self, users):
        from recbole.data.interaction import Interaction

        try:
            scores = self.model.full_sort_predict(Interaction({self.model.USER_ID: users}))
        except NotImplementedError:
            return self._all_scores_pairwise(users)
        return scores.to(device=users.device, dtype=torch.float32).view(len(users), -1)


class PairScoreAdapter(ScoreOnlyAdapter):
    """Score-only models whose ``predict`` scores one pair cheaply (pair networks): chosen pairs
    go through ``predict`` rather than a full catalogue row each."""

    score_by = "pairs"


class TablesAdapter(BackboneAdapter):
    """Scores are dot products of a user table and an item table, and those tables are the
    representations DE distils.  Subclasses say how to get the tables (:meth:`tables`).

    The tables are computed once per training step (the student calls :meth:`begin_step` at
    each; the frozen teacher once, after its weights are loaded) and shared by every call.
    """

    def __init__(self, model):
        super().__init__(model)
        self._cache = None
        self._dims = None

    def tables(self):
        """(user table [n_users, d], item table [n_items, d]) under the current weights."""
        raise NotImplementedError

    def begin_step(self):
        self._cache = None

    def _tables(self):
        if self._cache is None:
            self._cache = self.tables()
        return self._cache

    def _dimensions(self):
        if self._dims is None:
            # one look at the shapes, without touching the run's random state or gradients
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                user_all, item_all = self.tables()
            self._dims = (user_all.shape[1], item_all.shape[1])
        return self._dims

    @property
    def user_dim(self):
        return self._dimensions()[0]

    @property
    def item_dim(self):
        return self._dimensions()[1]

    def user_repr(self, users):
        return self._tables()[0][users]

    def item_repr(self, items):
        return self._tables()[1][items]

    def score(self, users, items):
        user_all, item_all = self._tables()
        return gathered_dot(user_all, item_all, users, items)

    def all_scores(self, users):
        user_all, item_all = self._tables()
        return user_all[users] @ item_all.t()

    def item_side_score(self, items, users):
        user_all, item_all = self._tables()
        return gathered_dot(item_all, user_all, items, users)

    def score_tables(self):
        return self._tables()


class MFAdapter(TablesAdapter):
    """Matrix factorisation (BPR; LINE's first-order scores): the embeddings are the
    representations, scores their dot products; looked up directly, nothing to cache."""

    model_names = ("BPR", "LINE")

    def tables(self):
        return self.model.user_embedding.weight, self.model.item_embedding.weight

    def _tables(self):
        return self.tables()

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


class PropagatedAdapter(TablesAdapter):
    """Graph models whose ``forward()`` returns the propagated (user table, item table) and
    whose score is their dot product: LightGCN (layer average), NGCF and SpectralCF (layers
    concatenated), DGCF (disentangled factors), NCL (LightGCN's propagation; its extra outputs
    are ignored).  The propagated tables are what DE distils."""

    model_names = ("LightGCN", "NGCF", "SpectralCF", "DGCF", "NCL")

    def tables(self):
        outputs = self.model.forward()
        return outputs[0], outputs[1]


class SGLAdapter(PropagatedAdapter):
    """SGL: LightGCN's propagation over the full training graph (not its augmented views)."""

    model_names = ("SGL",)

    def tables(self):
        return self.model.forward(self.model.train_graph)


class ENMFAdapter(TablesAdapter):
    """ENMF scores sum_k u_k i_k h_k = u . (i * h): the user embeddings and the item embeddings
    scaled by the shared weight h are the tables."""

    model_names = ("ENMF",)

    def tables(self):
        return self.model.user_embedding.weight, self.model.item_embedding.weight * self.model.H_i.weight


class SimpleXAdapter(BackboneAdapter):
    """SimpleX scores the cosine of a user vector and an item embedding: the user vector mixes
    the user's embedding with the mapped mean (or attention) of its history's item embeddings
    (``get_UI_aggregation``).  The representations DE distils are those two vectors normalised,
    so their dot product is the model's score; the user side is computed for the users asked
    (a history of up to ``history_len`` items each), never for the whole table during training.
    Dropout, which SimpleX applies to the user vector in its own loss only, is not applied."""

    model_names = ("SimpleX",)
    #: users per block when the whole user table is wanted (inference)
    USER_BLOCK = 4096

    def __init__(self, model):
        super().__init__(model)
        self._items = None

    @property
    def user_dim(self):
        return self.model.embedding_size

    @property
    def item_dim(self):
        return self.model.embedding_size

    def begin_step(self):
        self._items = None

    def user_repr(self, users):
        model = self.model
        history = model.history_item_id[users]
        mixed = model.get_UI_aggregation(model.user_emb(users), model.item_emb(history),
                                         model.history_item_len[users])
        return F.normalize(mixed, dim=1)

    def item_repr(self, items):
        return self._item_table()[items]

    def _item_table(self):
        if self._items is None:
            self._items = F.normalize(self.model.item_emb.weight, dim=1)
        return self._items

    def score(self, users, items):
        rows = torch.arange(len(users), device=users.device)
        return gathered_dot(self.user_repr(users), self._item_table(), rows, items)

    def all_scores(self, users):
        return self.user_repr(users) @ self._item_table().t()

    def item_side_score(self, items, users):
        distinct, slots = torch.unique(users, return_inverse=True)
        return gathered_dot(self._item_table(), self.user_repr(distinct), items, slots)

    def score_tables(self):
        users = torch.arange(self.model.n_users, device=self.model.item_emb.weight.device)
        table = torch.cat([self.user_repr(block) for block in users.split(self.USER_BLOCK)])
        return table, self._item_table()


class NeuMFAdapter(BackboneAdapter):
    """NeuMF: the representation is the concatenation [GMF embedding, MLP embedding].

    Those two embeddings are everything NeuMF learns per user or item (its MLP and output
    layer are shared by all pairs), so they are what a student must carry over; scores are
    NeuMF's logits (the pre-sigmoid output, which ranks the same as ``predict``).
    """

    model_names = ("NeuMF",)

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

    def pair_scores(self, users, items):
        return self.model.forward(users, items)

    def score(self, users, items):
        return self._listed_pair_scores(users, items)

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


#: RecBole model name -> adapter class; every other general recommender gets ScoreOnlyAdapter.
ADAPTERS = {name: cls for cls in (MFAdapter, PropagatedAdapter, SGLAdapter, ENMFAdapter, SimpleXAdapter,
                                   NeuMFAdapter)
            for name in cls.model_names}
#: score-only general recommenders whose predict scores one pair cheaply (pair networks).
ADAPTERS.update({name: PairScoreAdapter for name in ("DMF", "ConvNCF", "NNCF", "GCMC", "FISM", "NAIS")})


def register_adapter(model_name, adapter):
    """Use ``adapter`` (a :class:`BackboneAdapter` subclass) for the model named
    ``model_name``; for a model class of your own, see
    :func:`recbole_derrd.backbone_support.register_backbone`."""
    if not (isinstance(adapter, type) and issubclass(adapter, BackboneAdapter)):
        raise TypeError("register_adapter(%r, %r): the adapter must be a BackboneAdapter subclass"
                        % (model_name, adapter))
    ADAPTERS[model_name] = adapter


def adapter_class(model_name):
    """The adapter class serving the model named ``model_name`` (general or sequential)."""
    if model_name in ADAPTERS:
        return ADAPTERS[model_name]
    from recbole_derrd.backbone_support import is_sequential
    from recbole_derrd.sequential_backbones import SEQUENTIAL_ADAPTERS, SequentialScoreOnlyAdapter

    if model_name in SEQUENTIAL_ADAPTERS:
        return SEQUENTIAL_ADAPTERS[model_name]
    return SequentialScoreOnlyAdapter if is_sequential(model_name) else ScoreOnlyAdapter


def adapter_for(model):
    """The adapter of a built model (any recommender RecBole or the user registered)."""
    return adapter_class(type(model).__name__)(model)
