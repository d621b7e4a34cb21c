"""What a distillation term is, and what it may see.

A *term* is one method part (DE, RRD, RD, CD, ...) whose loss is added to the student's own.
A registered model is a student backbone plus a list of terms (:mod:`recbole_derrd.model`).
Each term

* reads and validates its own config keys once (:meth:`DistillationTerm.from_config`),
* registers the modules it trains on the model (:meth:`DistillationTerm.modules`),
* precomputes what depends on the frozen teacher (:meth:`DistillationTerm.prepare`),
* refreshes per-epoch state (:meth:`DistillationTerm.start_epoch`),
* returns its unweighted loss for a batch, summed over rows (:meth:`DistillationTerm.raw_loss`);
  the model multiplies it by the term's ``weight`` and the ``kd_reduction`` scale;
* may say something about the epoch it just trained (:meth:`DistillationTerm.epoch_summary`),
  appended to the epoch's training line in the log.

Terms see RecBole only through :class:`DistillationContext` and :class:`Batch`; the loss and
sampler code they call (:mod:`recbole_derrd.distillation`) knows neither RecBole nor config keys.
"""

import math

import numpy as np
import torch


#: ``kd_implementation``: the plugin's fast paths, or the straightforward computation of the
#: official code (same losses; kept to measure the difference, see benchmarks/time_to_quality.py).
KD_IMPLEMENTATIONS = ("fast", "reference")


# --------------------------------------------------------------------------- key checks
def number(config, key):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError("%s=%r must be a finite number" % (key, value))
    return value


def positive(config, key):
    value = number(config, key)
    if value <= 0:
        raise ValueError("%s=%r must be a positive number" % (key, value))
    return value


def non_negative(config, key):
    value = number(config, key)
    if value < 0:
        raise ValueError("%s=%r must be a number >= 0" % (key, value))
    return value


def positive_int(config, key):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("%s=%r must be a positive integer" % (key, value))
    return value


def non_negative_int(config, key):
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("%s=%r must be an integer >= 0" % (key, value))
    return value


def boolean(config, key):
    value = config[key]
    if not isinstance(value, bool):
        raise ValueError("%s=%r must be True or False" % (key, value))
    return value


def expert_schedule(config, prefix, threshold_key):
    """(tau_start, tau_end, anneal_epochs, weight_threshold) of a term built on the distillation
    experts (DE; HTD's group assignment): the keys ``<prefix>_tau_start``, ``<prefix>_tau_end``,
    ``<prefix>_anneal_epochs`` and ``threshold_key``, checked."""
    tau_start = positive(config, prefix + "_tau_start")
    tau_end = positive(config, prefix + "_tau_end")
    if tau_end > tau_start:
        raise ValueError("%s_tau_end=%r must not exceed %s_tau_start=%r" % (prefix, tau_end, prefix, tau_start))
    anneal_epochs = non_negative(config, prefix + "_anneal_epochs")
    threshold = non_negative(config, threshold_key)
    if threshold >= 1:
        raise ValueError("%s=%r must be below 1" % (threshold_key, threshold))
    return tau_start, tau_end, anneal_epochs, threshold


def one_of(config, key, allowed):
    value = config[key]
    if value not in allowed:
        raise ValueError("%s=%r must be one of %s" % (key, value, allowed))
    return value


# --------------------------------------------------------------------------- what terms see
class DistillationContext:
    """The student's and the teacher's adapters and the facts about the data a term may use."""

    def __init__(self, student, teacher, n_users, n_items, seed, device, train_counts, user_label,
                 item_counts, item_label, max_prefix_length=None):
        self.student = student  # BackboneAdapter
        self.teacher = teacher  # BackboneAdapter
        self.n_users = n_users
        self.n_items = n_items
        self.seed = seed
        self.device = device
        self.train_counts = train_counts  # [n_users] numpy: training interactions per user
        self.user_label = user_label  # internal user id -> text for messages (its token)
        self.item_counts = item_counts  # [n_items] numpy: training interactions per item
        self.item_label = item_label  # internal item id -> text for messages
        self.batches_per_epoch = None  # training batches per epoch, known once the loader is (prepare)
        #: sequential backbones: a term's rows are the bound batch's prefixes, not user ids
        self.sequential = getattr(student, "sequential", False)
        self.max_prefix_length = max_prefix_length  # MAX_ITEM_LIST_LENGTH (sequential)
        #: sequential: also keep a prefix's own items out of its lists (set by the RRD term)
        self.exclude_prefix_items = False
        #: sequential: (user, prefix length, target, prefix items) field names of a batch
        self.prefix_fields = None
        #: sequential: the teacher's answers for every training prefix (a PrefixTable), or None
        self.prefix_table = None

    def excluded_items(self, interaction):
        """Sequential: [rows, E] items never listed for a prefix: its target, and with
        ``exclude_prefix_items`` its own items (0, the padding id, fills short prefixes)."""
        _, _, target, prefix = self.prefix_fields
        targets = interaction[target].view(-1, 1)
        return torch.cat([targets, interaction[prefix]], 1) if self.exclude_prefix_items else targets

    def prefix_keys(self, interaction):
        """Sequential: [rows] keys identifying each row's query (see ``PrefixTopTable``)."""
        from recbole_derrd.distillation.query_lists import prefix_keys

        return prefix_keys(*(interaction[field] for field in self.prefix_fields))

    def teacher_ranking(self, train_matrix, depth):
        """The teacher's ``depth`` best unobserved items per user, [n_users, depth] numpy;
        chunked, never a users x items matrix."""
        from recbole_derrd.distillation import teacher_top_n

        return teacher_top_n(self.teacher.all_scores, train_matrix, depth, device=self.device)


class Batch:
    """One training batch as the terms see it: its distinct users (sequential backbones: its
    row indices, one prefix each), positive and negative items."""

    def __init__(self, users, positives, negatives):
        self.users = users
        self.positives = positives
        self.negatives = negatives
        #: [users, K + L] items the RRD term ranked for these users (set by it; IR reads it)
        self.ranked_items = None
        #: sequential: [rows, E] items never listed for a row (its target; its prefix's items)
        self.excluded = None
        #: sequential: the batch's Interaction (its prefixes)
        self.interaction = None


class DistillationTerm:
    """Base class of a term; see the module docstring for the life cycle."""

    #: the loss part's name in logs and errors (``DE``, ``RRD``, ...).
    name = None
    #: whether the term reads user and item representations (else scores only)
    needs_representations = False
    #: whether the term works with sequential backbones (rows = a batch's prefixes)
    sequential_queries = False

    def __init__(self, weight):
        self.weight = weight

    @classmethod
    def from_config(cls, config, context):
        raise NotImplementedError

    def modules(self):
        """{attribute name: torch module} to register on the model (trained, checkpointed)."""
        return {}

    def prepare(self, context, train_matrix):
        """Precompute what depends on the (now ready) teacher; called once before training."""

    def start_epoch(self, epoch):
        """Per-epoch state (temperatures, sampled lists)."""

    def raw_loss(self, batch):
        raise NotImplementedError

    def epoch_summary(self):
        """A short text about the epoch trained since :meth:`start_epoch` (its log line), or ""."""
        return ""


def check_room(context, needed, what):
    """Every user must have ``needed`` unobserved items (naming the first user who has not)."""
    from recbole_derrd.distillation.ranking import check_room as check

    check(np.asarray(context.train_counts), context.n_items, needed, what, context.user_label)
