"""DE, RRD and DE-RRD as RecBole general recommenders.

A distilled model *wraps* a stock RecBole backbone (the student, e.g. a 20-dim BPR) and adds
the distillation losses on top of the backbone's own loss.  Prediction is the student's alone,
so RecBole's evaluation, and an exported student, behave exactly like the stock backbone.

The frozen teacher is held outside the module tree: it is not in ``parameters()`` (so not in
the optimizer), not in ``state_dict()`` (so not in the student's checkpoints) and not
deep-copied by RecBole's ``get_flops``.  Its weights are filled in by
:class:`recbole_derrd.trainer.DistillationTrainer` before training (trained once and cached,
or loaded from ``teacher_checkpoint``).
"""

import math

import numpy as np
import torch

from recbole.model.abstract_recommender import GeneralRecommender
from recbole.utils import InputType, ModelType, get_model

from recbole_derrd.backbones import adapter_for
from recbole_derrd.config import check_backbone_sizes, teacher_config
from recbole_derrd.distillation import (
    DistillationExperts,
    RRDSampler,
    relaxed_ranking_loss,
    tau_at_epoch,
    teacher_top_n,
)
from recbole_derrd.distillation.ranking import check_room

KD_REDUCTIONS = ("per_row", "sum")
RRD_SAMPLING = ("sample", "top")


class FrozenTeacher:
    """Holds the teacher by reference; copying a model shares it instead of duplicating it."""

    def __init__(self, model):
        self.model = model

    def __deepcopy__(self, memo):
        return self


def _number(config, key):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("%s=%r must be a finite number" % (key, value))
    return value


def _positive(config, key):
    value = _number(config, key)
    if value <= 0:
        raise ValueError("%s=%r must be a positive number" % (key, value))
    return value


def _non_negative(config, key):
    value = _number(config, key)
    if value < 0:
        raise ValueError("%s=%r must be a number >= 0" % (key, value))
    return value


def _positive_int(config, key):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("%s=%r must be a positive integer" % (key, value))
    return value


def user_token_label(dataset):
    """Internal user id -> ``'<token>' (internal id N)`` for messages."""
    def label(uid):
        return "%r (internal id %d)" % (str(dataset.id2token(dataset.uid_field, uid)), uid)
    return label


class DistilledRecommender(GeneralRecommender):
    """Student backbone + teacher + the distillation losses this class enables."""

    type = ModelType.GENERAL
    # RecBole reads this before the config exists; the plugin's Config hook replaces
    # MODEL_INPUT_TYPE with the student backbone's own input type.
    input_type = InputType.PAIRWISE
    is_distillation_model = True
    use_de = False
    use_rrd = False
    #: the plugin's yaml layers for this model, relative to properties/, lowest first.
    property_files = ("distillation.yaml",)
    loss_part_names = ("base",)

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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config["seed"])
            teacher = get_model(config["teacher_model"])(self.teacher_config, dataset)
        teacher.to(config["device"]).eval().requires_grad_(False)
        self._teacher = FrozenTeacher(teacher)
        self.teacher_adapter = adapter_for(teacher)
        self.teacher_ready = False

        self.kd_reduction = config["kd_reduction"]
        if self.kd_reduction not in KD_REDUCTIONS:
            raise ValueError("kd_reduction=%r must be one of %s" % (self.kd_reduction, KD_REDUCTIONS))
        names = ["base"]
        if self.use_de:
            names.append("DE")
            self.de_weight = _non_negative(config, "de_weight")
            self.tau_start = _positive(config, "de_tau_start")
            self.tau_end = _positive(config, "de_tau_end")
            if self.tau_end > self.tau_start:
                raise ValueError("de_tau_end=%r must not exceed de_tau_start=%r"
                                 % (self.tau_end, self.tau_start))
            self.anneal_epochs = _non_negative(config, "de_anneal_epochs")
            num_experts = _positive_int(config, "de_num_experts")
            threshold = _non_negative(config, "de_weight_threshold")
            if threshold >= 1:
                raise ValueError("de_weight_threshold=%r must be below 1" % (threshold,))
            self.user_experts = DistillationExperts(
                self.student_adapter.user_dim, self.teacher_adapter.user_dim, num_experts, threshold)
            self.item_experts = DistillationExperts(
                self.student_adapter.item_dim, self.teacher_adapter.item_dim, num_experts, threshold)
            self.tau = self.tau_start
        if self.use_rrd:
            names.append("RRD")
            self.rrd_weight = _non_negative(config, "rrd_weight")
            self.rrd_top_n = _positive_int(config, "rrd_top_n")
            self.rrd_k = _positive_int(config, "rrd_k")
            self.rrd_l = _positive_int(config, "rrd_l")
            self.rrd_temperature = _positive(config, "rrd_temperature")
            self.rrd_sampling = config["rrd_sampling"]
            if self.rrd_k > self.rrd_top_n:
                raise ValueError("rrd_k=%d must not exceed rrd_top_n=%d" % (self.rrd_k, self.rrd_top_n))
            if self.rrd_sampling not in RRD_SAMPLING:
                raise ValueError("rrd_sampling=%r must be one of %s" % (self.rrd_sampling, RRD_SAMPLING))
            # Fail before the teacher is trained if some user cannot get N + L distinct items.
            check_room(self.training_counts(dataset), self.n_items, self.rrd_top_n + self.rrd_l,
                       "rrd_top_n + rrd_l = %d" % (self.rrd_top_n + self.rrd_l), user_token_label(dataset))
            self.rrd_sampler = None
            self.rrd_lists = None
        self.loss_part_names = tuple(names)

    # ------------------------------------------------------------------ teacher / hooks
    @property
    def teacher(self):
        return self._teacher.model

    def prepare(self, train_data, valid_data, show_progress=False):
        """Make the teacher ready and precompute what depends only on it (called by the trainer)."""
        from recbole_derrd.teacher import prepare_teacher

        if not self.teacher_ready:
            prepare_teacher(self, train_data, valid_data, show_progress=show_progress)
            self.teacher_adapter.begin_step()
            self.teacher_ready = True
        if self.use_rrd and self.rrd_sampler is None:
            top, train_matrix = self.teacher_ranking(train_data, self.rrd_top_n)
            self.rrd_sampler = RRDSampler(
                top, train_matrix, self.rrd_k, self.rrd_l, self.rrd_temperature,
                mode=self.rrd_sampling, seed=self.config["seed"])

    def training_counts(self, dataset):
        """Training interactions per user id ([n_users] numpy), for the list-length checks."""
        return np.bincount(dataset.inter_feat[self.USER_ID].numpy(), minlength=self.n_users)

    def teacher_ranking(self, train_data, depth):
        """(the teacher's ``depth`` best unobserved items per user [n_users, depth] numpy,
        the training CSR it excluded); chunked, never a users x items matrix."""
        train_matrix = train_data._dataset.inter_matrix(form="csr").astype(np.float32)
        return teacher_top_n(self.teacher_adapter.all_scores, train_matrix, depth,
                             device=self.device), train_matrix

    def start_epoch(self, epoch):
        """Per-epoch state: the annealed Gumbel temperature and fresh RRD lists."""
        self.epoch = epoch
        if self.use_de:
            self.tau = tau_at_epoch(epoch, self.tau_start, self.tau_end, self.anneal_epochs)
        if self.use_rrd:
            if self.rrd_sampler is None:
                raise RuntimeError("%s must be trained with its DistillationTrainer (teacher not prepared)"
                                   % type(self).__name__)
            interesting, uninteresting = self.rrd_sampler.sample(epoch)
            # One [n_users, K + L] table (K interesting, then L uninteresting items per user): a
            # batch's lists are then one index_select (10 us for ~800 users here) instead of
            # two advanced indexings and a cat (105 us).
            self.rrd_lists = torch.as_tensor(np.concatenate([interesting, uninteresting], 1),
                                             device=self.device)

    # ------------------------------------------------------------------ losses
    def _batch_items(self, interaction):
        """(positive items, negative items) of a pairwise or pointwise training batch."""
        items = interaction[self.ITEM_ID]
        if self.NEG_ITEM_ID in interaction:
            return items, interaction[self.NEG_ITEM_ID]
        label = interaction[self.LABEL] if self.LABEL in interaction else torch.ones_like(items)
        return items[label > 0.5], items[label <= 0.5]

    def de_loss(self, interaction):
        """DE(unique users) + 0.5 * (DE(unique positive items) + DE(unique negative items)).

        The two item sets go through the item experts in one call (rows weighted 0.5): the
        same loss as two calls, with larger and fewer matrix products.
        """
        users = torch.unique(interaction[self.USER_ID])
        loss = self._de_part(self.user_experts, self.student_adapter.user_repr,
                             self.teacher_adapter.user_repr, users)
        item_sets = [torch.unique(items) for items in self._batch_items(interaction) if items.numel()]
        if item_sets:
            items = torch.cat(item_sets)
            half = torch.full(items.shape, 0.5, device=items.device)
            loss = loss + self._de_part(self.item_experts, self.student_adapter.item_repr,
                                        self.teacher_adapter.item_repr, items, half)
        return loss

    def _de_part(self, experts, student_repr, teacher_repr, ids, row_weights=None):
        with torch.no_grad():
            target = teacher_repr(ids)
        return experts.loss(student_repr(ids), target, self.tau, row_weights)

    def rrd_loss(self, interaction):
        if self.rrd_lists is None:
            raise RuntimeError("%s must be trained with its DistillationTrainer (no RRD lists)"
                               % type(self).__name__)
        users = torch.unique(interaction[self.USER_ID])
        items = self.rrd_lists.index_select(0, users)
        scores = self.student_adapter.score(users, items)
        return relaxed_ranking_loss(scores[:, : self.rrd_k], scores[:, self.rrd_k:])

    def calculate_loss(self, interaction):
        self.student_adapter.begin_step()
        base = self.student.calculate_loss(interaction)
        if isinstance(base, tuple):
            base = sum(base)
        # RecBole's base losses are batch means while the official DE-RRD code sums every part;
        # dividing the summed KD parts by the batch's rows keeps the official balance.
        scale = 1.0 / len(interaction) if self.kd_reduction == "per_row" else 1.0
        parts = [base]
        if self.use_de:
            parts.append(self.de_weight * scale * self.de_loss(interaction))
        if self.use_rrd:
            parts.append(self.rrd_weight * scale * self.rrd_loss(interaction))
        parts += [scale * part for part in self.extra_losses(interaction)]
        if not torch.isfinite(sum(parts)):  # one check per batch; name the part only on failure
            name, part = next((n, p) for n, p in zip(self.loss_part_names, parts)
                              if not torch.isfinite(p))
            raise FloatingPointError(
                "the %s loss became %s in epoch %d: training stopped; the last checkpoint "
                "written before it is kept" % (name, part.item(), self.epoch))
        return tuple(parts)

    def extra_losses(self, interaction):
        """Weighted, summed KD losses of subclasses (baselines), after DE and RRD."""
        return []

    # ------------------------------------------------------------------ prediction
    def predict(self, interaction):
        return self.student.predict(interaction)

    def full_sort_predict(self, interaction):
        return self.student.full_sort_predict(interaction)


class DE(DistilledRecommender):
    """Student trained with Distillation Experts only."""

    use_de = True
    property_files = ("distillation.yaml", "model/DE.yaml")


class RRD(DistilledRecommender):
    """Student trained with Relaxed Ranking Distillation only."""

    use_rrd = True
    property_files = ("distillation.yaml", "model/RRD.yaml")


class DERRD(DistilledRecommender):
    """Student trained with both DE and RRD (the paper's DE-RRD)."""

    use_de = True
    use_rrd = True
    property_files = ("distillation.yaml", "model/DE.yaml", "model/RRD.yaml", "model/DERRD.yaml")
