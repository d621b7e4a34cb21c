"""Adapters for RecBole's sequential recommenders: the *query* is a training prefix, not a user.

A sequential model scores the next item of a sequence prefix (``item_seq``, ``item_seq_len``,
sometimes the user).  The distillation terms speak of "users" (rows to distil, rows to rank
items for); for a sequential backbone those rows are the **rows of the current batch**, each a
prefix, so the teacher and the student are compared on the same query.  Before a training step
the model binds the batch (:meth:`SequentialAdapter.bind`) to both adapters; the terms then pass
row indices into it where a general backbone gets user ids.

* :class:`SequentialAdapter` -- models whose score is ``query . item_table`` (SASRec, GRU4Rec,
  NARM, STAMP, Caser, LightSANs, CORE, BERT4Rec, ...): the query vector (the model's sequence
  representation) and the item table are what DE distils; the query is computed once per step
  and shared by every term;
* :class:`SequentialScoreOnlyAdapter` -- any other sequential model, through its own
  ``full_sort_predict`` (FPMC, TransRec, RepeatNet, the CPR heads): enough for the ranking terms.
"""

import inspect

import torch
import torch.nn.functional as F

from recbole_derrd.backbones import BackboneAdapter, ScoresOnly, gathered_dot

#: names a RecBole sequential ``forward`` gives its arguments -> what to pass
_SEQ_ARGUMENTS = {"item_seq": "seq", "seq_item": "seq", "inverse_item_seq": "seq",
                  "item_seq_len": "length", "seq_item_len": "length", "user": "user"}


class SequentialAdapter(BackboneAdapter):
    """Score = ``forward(prefix) . item_table`` (+ an item bias).  Subclasses override
    :meth:`query_of` / :meth:`item_table` where a model differs from that plain form; each
    adapter is checked against the model's own ``full_sort_predict`` in the tests."""

    model_names = ("SASRec", "GRU4Rec", "NARM", "STAMP", "LightSANs", "GCSAN", "SRGNN", "SINE",
                   "FEARec", "NextItNet", "Caser", "SHAN", "FOSSIL", "HRM")
    sequential = True

    def __init__(self, model):
        super().__init__(model)
        self._batch = None
        self._query = None
        self._table = self._key_fn = None  # a frozen teacher's prefix table (use_prefix_table)
        # the class's forward: the instance's may be a RememberedForward wrapping it
        signature = inspect.signature(type(model).forward)
        self._arguments = [_SEQ_ARGUMENTS.get(name) for name in list(signature.parameters)[1:]]
        if None in self._arguments:
            raise TypeError("%s.forward%s: cannot tell which arguments are the prefix"
                            % (type(model).__name__, signature))

    # ------------------------------------------------------------------ the bound batch
    def bind(self, interaction):
        """Use ``interaction``'s prefixes as the rows of the next calls (one training step)."""
        self._batch = interaction
        self._query = None

    def _bound(self):
        if self._batch is None:
            raise RuntimeError("%s: no batch bound (the distilled model binds each training batch)"
                               % type(self.model).__name__)
        return self._batch

    def queries(self):
        """[B, d] query vectors of the bound batch under the current weights (once per step)."""
        if self._query is None:
            self._query = self._from_table(self._bound())
            if self._query is None:
                self._query = self.query_of(self._bound())
        return self._query

    def use_prefix_table(self, table, key_fn):
        """Read query vectors from ``table`` (a frozen teacher's, computed once) for batches
        whose every prefix it holds; ``key_fn(interaction)`` gives the rows' keys."""
        self._table, self._key_fn = table, key_fn

    def _from_table(self, interaction):
        table = self._table
        if table is None or table.queries is None:
            return None
        found, position = table.positions(self._key_fn(interaction))
        if not bool(found.all()):
            return None
        device = interaction[self.model.ITEM_SEQ].device
        return table.queries[position].to(device)

    def forward_arguments(self, interaction):
        """The arguments the model's ``forward`` takes for ``interaction``'s prefixes."""
        model = self.model
        values = {"seq": interaction[model.ITEM_SEQ], "length": interaction[model.ITEM_SEQ_LEN],
                  "user": interaction[model.USER_ID] if model.USER_ID in interaction else None}
        return [values[name] for name in self._arguments]

    def query_of(self, interaction):
        arguments = self.forward_arguments(interaction)
        remembered = vars(self.model).get("forward")
        if isinstance(remembered, RememberedForward):
            output = remembered.output_for(arguments)
            if output is not None:  # the student's own loss already ran this forward
                return output
        return self.model.forward(*arguments)

    def remember_forward(self):
        """Keep the output of the model's last ``forward`` call, so the terms reuse the one the
        student's own loss computed on the same prefixes (same weights, same dropout draw)
        instead of a second forward and backward.  Used for the student only."""
        if not isinstance(vars(self.model).get("forward"), RememberedForward):
            self.model.forward = RememberedForward(self.model)

    def begin_step(self):
        self._query = None
        remembered = vars(self.model).get("forward")
        if isinstance(remembered, RememberedForward):
            remembered.forget()

    def item_table(self):
        """[n_items, d] item representations the queries are scored against."""
        return self.model.item_embedding.weight

    def item_bias(self):
        """[n_items] bias added to every score, or None."""
        return None

    # ------------------------------------------------------------------ the interface
    @property
    def user_dim(self):
        return self.item_dim  # scores are dot products: the query lives in the item space

    @property
    def item_dim(self):
        return self.item_table().shape[1]

    def user_repr(self, rows):
        return self.queries()[rows]

    def item_repr(self, items):
        return self.item_table()[items]

    def score(self, rows, items):
        scores = gathered_dot(self.queries(), self.item_table(), rows, items)
        bias = self.item_bias()
        return scores if bias is None else scores + bias[items]

    def all_scores(self, rows):
        scores = self.queries()[rows] @ self.item_table().t()
        bias = self.item_bias()
        return scores if bias is None else scores + bias

    def item_side_score(self, items, users):
        raise TypeError("%s is sequential: item-side terms (IR) rank users, which have no query here"
                        % type(self.model).__name__)


class RememberedForward:
    """A model's own ``forward``, remembering its last output and the argument tensors it was
    called with.  Installed on the student instance (``model.forward``), so a loss that calls
    ``self.forward(...)`` is seen too; the class's forward is unchanged, nothing is saved with
    the weights, and a deep copy of the model copies it along with the model."""

    def __init__(self, model):
        self.model = model
        self.arguments = self.output = None

    def __call__(self, *arguments, **keywords):
        output = type(self.model).forward(self.model, *arguments, **keywords)
        if not keywords and torch.is_grad_enabled():
            self.arguments, self.output = arguments, output
        return output

    def output_for(self, arguments):
        """The remembered output when it was computed from exactly these tensors, else None."""
        if self.arguments is None or len(arguments) != len(self.arguments):
            return None
        if all(a is b for a, b in zip(arguments, self.arguments)) and torch.is_tensor(self.output):
            return self.output
        return None

    def forget(self):
        self.arguments = self.output = None


class CoreAdapter(SequentialAdapter):
    """CORE: normalised query against normalised item embeddings, divided by its temperature."""

    model_names = ("CORE",)

    def item_table(self):
        return F.normalize(self.model.item_embedding.weight, dim=-1)

    def score(self, rows, items):
        return super().score(rows, items) / self.model.temperature

    def all_scores(self, rows):
        return super().all_scores(rows) / self.model.temperature


class BERT4RecAdapter(SequentialAdapter):
    """BERT4Rec: the prefix with a mask token appended; the query is the output at the mask's
    position, scored against the item table (without the mask token's row) plus a bias."""

    model_names = ("BERT4Rec",)

    def query_of(self, interaction):
        model = self.model
        seq, length = interaction[model.ITEM_SEQ], interaction[model.ITEM_SEQ_LEN]
        output = model.forward(model.reconstruct_test_data(seq, length))
        return model.gather_indexes(output, length - 1)

    def item_table(self):
        return self.model.item_embedding.weight[: self.model.n_items]

    def item_bias(self):
        return self.model.output_bias


class HGNAdapter(SequentialAdapter):
    """HGN scores against its separate prediction table."""

    model_names = ("HGN",)

    def item_table(self):
        return self.model.item_embedding_for_prediction.weight


class NPEAdapter(SequentialAdapter):
    """NPE scores against the ReLU of its item embeddings."""

    model_names = ("NPE",)

    def item_table(self):
        return torch.relu(self.model.item_embedding.weight)


class SequentialScoreOnlyAdapter(ScoresOnly, SequentialAdapter):
    """Any sequential model through its own ``full_sort_predict`` on the bound batch's rows:
    scores only (no representation for DE)."""

    model_names = ()
    row_kind = "query"

    def __init__(self, model):
        BackboneAdapter.__init__(self, model)
        self._batch = None
        self._query = None

    def queries(self):
        """The bound batch's [B, n_items] scores (once per step)."""
        if self._query is None:
            self._query = self.model.full_sort_predict(self._bound()).float().view(len(self._bound()), -1)
        return self._query

    def score(self, rows, items):
        return self.queries()[rows].gather(1, items)

    def all_scores(self, rows):
        return self.queries()[rows]


#: RecBole sequential model name -> adapter class; every other one gets the score-only adapter.
SEQUENTIAL_ADAPTERS = {name: cls for cls in (SequentialAdapter, CoreAdapter, BERT4RecAdapter, HGNAdapter,
                                              NPEAdapter)
                       for name in cls.model_names}
