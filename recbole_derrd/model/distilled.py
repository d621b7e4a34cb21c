"""A distilled model: a stock RecBole backbone (the student) plus distillation terms.

The student (e.g. a 20-dim BPR) is a RecBole model; each term (:mod:`recbole_derrd.terms`)
adds its weighted loss to the student's own.  Prediction is the student's alone, so RecBole's
evaluation, and an exported student, behave exactly like the stock backbone.

The frozen teacher is held outside the module tree: it is not in ``parameters()`` (so not in
the optimizer), not in ``state_dict()`` (so not in the student's checkpoints) and not
deep-copied by RecBole's ``get_flops``.  Its weights are filled in before training by
:func:`recbole_derrd.teacher.prepare_distillation` (called by the DistillationTrainer), which
then lets each term precompute what depends on the teacher (:meth:`prepare_terms`).  This
module imports neither the teacher nor the trainer module.
"""

import time

import numpy as np
import torch

from recbole.data.transform import construct_transform
from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType, get_model

from recbole_derrd.backbones import adapter_for
from recbole_derrd.config import check_backbone_sizes, teacher_config
from recbole_derrd.terms import CD as CDTerm
from recbole_derrd.terms import DE as DETerm
from recbole_derrd.terms import HTD as HTDTerm
from recbole_derrd.terms import IR as IRTerm
from recbole_derrd.terms import RCE as RCETerm
from recbole_derrd.terms import RD as RDTerm
from recbole_derrd.terms import RRD as RRDTerm
from recbole_derrd.terms import Batch, DistillationContext
from recbole_derrd.terms.base import non_negative, one_of

KD_REDUCTIONS = ("per_row", "sum")


class FrozenTeacher:
    """Holds the teacher by reference; copying a model shares it instead of duplicating it."""

    def __init__(self, model):
        self.model = model

    def __deepcopy__(self, memo):
        return self


def token_label(dataset, field):
    """Internal id of ``field`` (users, items) -> ``'<token>' (internal id N)`` for messages."""
    def label(internal_id):
        return "%r (internal id %d)" % (str(dataset.id2token(field, internal_id)), internal_id)
    return label


class DistilledRecommender(GeneralRecommender):
    """Student backbone + teacher + the distillation terms listed in :attr:`terms`."""

    type = ModelType.GENERAL
    # RecBole reads this before the config exists; the plugin's Config hook replaces
    # MODEL_INPUT_TYPE with the student backbone's own input type.
    input_type = InputType.PAIRWISE
    is_distillation_model = True
    #: the term classes whose losses are added to the student's, in this order.
    terms = ()
    #: the plugin's yaml layers for this model, relative to properties/, lowest first.
    property_files = ("distillation.yaml",)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.config = config
        self.LABEL = config["LABEL_FIELD"]
        self.epoch = 0
        check_backbone_sizes(config)
        self.student = get_model(config["student_model"])(config, dataset)
        self.student_adapter = adapter_for(self.student)

        # The teacher's shell is built on a forked RNG so the student's initial weights (and
        # everything after) match a stock run of the student backbone with the same seed.
        self.teacher_config = teacher_config(config)
        # A batch transform (BERT4Rec's masking) names the fields it adds in the config, and the
        # model reads those names when built: RecBole builds the loader first; the teacher's
        # loader comes later, so its transform declares them now.
        construct_transform(self.teacher_config)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config["seed"])
            teacher = get_model(config["teacher_model"])(self.teacher_config, dataset)
        teacher.to(config["device"]).eval().requires_grad_(False)
        self._teacher = FrozenTeacher(teacher)
        self.teacher_adapter = adapter_for(teacher)
        self.teacher_ready = False
        #: wall seconds of the terms' one-off setup (teacher top-N, ...): part of a run's time
        self.terms_prepare_seconds = None

        self.kd_reduction = one_of(config, "kd_reduction", KD_REDUCTIONS)
        self.prefix_cache_mib = non_negative(config, "prefix_cache_mib")
        #: sequential backbones: the terms' rows are the batch's prefixes (see sequential_backbones)
        self.sequential = getattr(self.student_adapter, "sequential", False)
        if self.sequential:
            self.ITEM_SEQ = self.student.ITEM_SEQ
            if self.student_adapter.has_representations:
                self.student_adapter.remember_forward()
        self.context = DistillationContext(
            self.student_adapter, self.teacher_adapter, self.n_users, self.n_items, config["seed"],
            config["device"], self.training_counts(dataset, self.USER_ID, self.n_users),
            token_label(dataset, self.USER_ID), self.training_counts(dataset, self.ITEM_ID, self.n_items),
            token_label(dataset, self.ITEM_ID),
            max_prefix_length=config["MAX_ITEM_LIST_LENGTH"] if self.sequential else None)
        if self.sequential:
            self.context.prefix_fields = (self.USER_ID, self.student.ITEM_SEQ_LEN, self.ITEM_ID, self.ITEM_SEQ)
        self.distillation_terms = [term.from_config(config, self.context) for term in self.terms]
        for term in self.distillation_terms:
            for name, module in term.modules().items():
                self.add_module(name, module)
        self.loss_part_names = ("base",) + tuple(term.name for term in self.distillation_terms)

    @property
    def teacher(self):
        return self._teacher.model

    def use_teacher(self, teacher, tconfig):
        """Replace the teacher by another of the same sizes (a tuned candidate, see
        :mod:`recbole_derrd.teacher_tuning`); the terms reach it through the shared adapter."""
        teacher.to(self.config["device"]).eval().requires_grad_(False)
        self._teacher.model = teacher
        self.teacher_adapter.model = teacher
        self.teacher_adapter.begin_step()
        self.teacher_config = tconfig

    def term(self, name):
        """The term named ``name`` (``"DE"``, ``"RRD"``, ...)."""
        for term in self.distillation_terms:
            if term.name == name:
                return term
        raise KeyError("%s has no %s term" % (type(self).__name__, name))

    @staticmethod
    def training_counts(dataset, field, size):
        """Training interactions per id of ``field`` ([size] numpy), for the list-length checks."""
        return np.bincount(dataset.inter_feat[field].numpy(), minlength=size)

    def prepare_terms(self, train_data):
        """Let every term precompute what depends on the (ready) teacher; idempotent."""
        if not self.teacher_ready:
            raise RuntimeError("%s: the teacher is not ready; use prepare_distillation"
                               % type(self).__name__)
        start = time.perf_counter()
        self.teacher_adapter.begin_step()
        self.context.batches_per_epoch = len(train_data)
        train_matrix = train_data._dataset.inter_matrix(form="csr").astype(np.float32)
        for term in self.distillation_terms:
            term.prepare(self.context, train_matrix)
        if self.sequential and self.context.prefix_table is None:
            self.context.prefix_table = self.prefix_table(train_data._dataset.inter_feat)
        self.terms_prepare_seconds = time.perf_counter() - start

    #: training prefixes per teacher pass while the prefix table is built
    PREFIX_BLOCK = 1024

    def prefix_table(self, prefixes):
        """Sequential: the frozen teacher's top-N (RRD) and prefix representation (DE) of every
        training prefix, one teacher pass over them, when the table fits ``prefix_cache_mib``
        (else None: the terms ask the teacher per batch)."""
        from recbole_derrd.distillation.query_lists import PrefixTable

        ranking = next((t for t in self.distillation_terms if hasattr(t, "prefix_top")), None)
        queries = self.teacher_adapter.has_representations and any(
            t.needs_representations for t in self.distillation_terms)
        if ranking is None and not queries:
            return None
        row_bytes = 8 + (4 * ranking.top_n if ranking else 0) + (4 * self.teacher_adapter.user_dim if queries else 0)
        need_mib = len(prefixes) * row_bytes / 2 ** 20
        if need_mib > self.prefix_cache_mib:
            self.logger.info("prefix table not kept: %d training prefixes need %.0f MiB > prefix_cache_mib=%g; "
                             "the teacher answers per batch" % (len(prefixes), need_mib, self.prefix_cache_mib))
            return None
        keys, tops, vectors = [], [], []
        with torch.no_grad():
            for start in range(0, len(prefixes), self.PREFIX_BLOCK):
                block = prefixes[start:start + self.PREFIX_BLOCK].to(self.config["device"])
                self.teacher_adapter.bind(block)
                keys.append(self.context.prefix_keys(block))
                if ranking is not None:
                    rows = torch.arange(len(block), device=self.config["device"])
                    tops.append(ranking.prefix_top(rows, self.context.excluded_items(block)).cpu())
                if queries:
                    vectors.append(self.teacher_adapter.queries().float().cpu())
        self.teacher_adapter.bind(None)
        table = PrefixTable(torch.cat(keys), torch.cat(tops) if tops else None,
                            torch.cat(vectors) if vectors else None)
        if queries:
            self.teacher_adapter.use_prefix_table(table, self.context.prefix_keys)
        return table

    def start_epoch(self, epoch):
        """Per-epoch state of every term (annealed temperatures, sampled lists)."""
        self.epoch = epoch
        for term in self.distillation_terms:
            term.start_epoch(epoch)

    def epoch_summary(self):
        """The terms' remarks on the epoch just trained, "; "-joined (the trainer logs them)."""
        return "; ".join(text for text in (term.epoch_summary() for term in self.distillation_terms) if text)

    # ------------------------------------------------------------------ losses
    def _batch_items(self, interaction):
        """(positive items, negative items) of a pairwise or pointwise training batch."""
        items = interaction[self.ITEM_ID]
        if self.NEG_ITEM_ID in interaction:
            return items, interaction[self.NEG_ITEM_ID]
        label = interaction[self.LABEL] if self.LABEL in interaction else torch.ones_like(items)
        return items[label > 0.5], items[label <= 0.5]

    def batch(self, interaction):
        if not self.sequential:
            return Batch(torch.unique(interaction[self.USER_ID]), *self._batch_items(interaction))
        # a sequential batch's rows are its prefixes; the terms index them by row
        positives, negatives = self._batch_items(interaction)
        batch = Batch(torch.arange(len(interaction), device=positives.device), positives, negatives)
        batch.excluded = self.context.excluded_items(interaction)
        batch.interaction = interaction
        return batch

    def calculate_loss(self, interaction):
        self.student_adapter.begin_step()
        if self.sequential:
            self.student_adapter.bind(interaction)
            self.teacher_adapter.bind(interaction)
        base = self.student.calculate_loss(interaction)
        if isinstance(base, tuple):
            base = sum(base)
        # RecBole's base losses are batch means while the official DE-RRD code sums every part;
        # dividing the summed KD parts by the batch's rows keeps the official balance.
        scale = 1.0 / len(interaction) if self.kd_reduction == "per_row" else 1.0
        parts = [base]
        if self.distillation_terms:
            batch = self.batch(interaction)
            parts += [term.weight * scale * term.raw_loss(batch) for term in self.distillation_terms]
        if not torch.isfinite(sum(parts)):  # one check per batch; name the part only on failure
            name, part = next((n, p) for n, p in zip(self.loss_part_names, parts)
                              if not torch.isfinite(p))
            raise FloatingPointError(
                "the %s loss became %s in epoch %d: training stopped; the last checkpoint "
                "written before it is kept" % (name, part.item(), self.epoch))
        return tuple(parts)

    # ------------------------------------------------------------------ prediction
    def predict(self, interaction):
        return self.student.predict(interaction)

    def full_sort_predict(self, interaction):
        return self.student.full_sort_predict(interaction)


class DE(DistilledRecommender):
    """Student trained with Distillation Experts only."""

    terms = (DETerm,)
    property_files = ("distillation.yaml", "model/DE.yaml")


class RRD(DistilledRecommender):
    """Student trained with Relaxed Ranking Distillation only."""

    terms = (RRDTerm,)
    property_files = ("distillation.yaml", "model/RRD.yaml")


class DERRD(DistilledRecommender):
    """Student trained with both DE and RRD (the paper's DE-RRD)."""

    terms = (DETerm, RRDTerm)
    property_files = ("distillation.yaml", "model/DE.yaml", "model/RRD.yaml", "model/DERRD.yaml")


class RD(DistilledRecommender):
    """Student trained with Ranking Distillation (Tang & Wang, KDD 2018), the paper's baseline."""

    terms = (RDTerm,)
    property_files = ("distillation.yaml", "model/RD.yaml")


class CD(DistilledRecommender):
    """Student trained with Collaborative Distillation (Lee et al., ICDM 2019), the paper's baseline."""

    terms = (CDTerm,)
    property_files = ("distillation.yaml", "model/CD.yaml")


class IRRRD(DistilledRecommender):
    """Student trained with RRD plus the item-side ranking regularizer IR (Kang et al.,
    Information Sciences 2021): the teacher's ranking of items per user and of users per item."""

    terms = (RRDTerm, IRTerm)
    property_files = ("distillation.yaml", "model/RRD.yaml", "model/IR.yaml")


class DEIRRRD(DistilledRecommender):
    """Student trained with DE, RRD and the item-side regularizer IR: the authors' IR-RRD with
    their Distillation Experts added (issue 18's "DE + IR-RRD")."""

    terms = (DETerm, RRDTerm, IRTerm)
    property_files = ("distillation.yaml", "model/DE.yaml", "model/RRD.yaml", "model/IR.yaml")


class HTD(DistilledRecommender):
    """Student trained with hierarchical topology distillation (Kang et al., KDD 2021), the
    authors' successor to DE: the relations among the teacher's representations, by group."""

    terms = (HTDTerm,)
    property_files = ("distillation.yaml", "model/HTD.yaml")


class RCEKD(DistilledRecommender):
    """Student trained with rejuvenated cross-entropy distillation (RCE-KD; Zhu & Zhang, ICLR 2026):
    cross-entropy on the student's own top items and on the teacher's top items completed by a
    sample that approximates closure under the student's ranking."""

    terms = (RCETerm,)
    property_files = ("distillation.yaml", "model/RCEKD.yaml")
