"""Which models may be a teacher or a student, and why the others are refused.

Any RecBole 1.2.1 general recommender (and any model a user registers with
:func:`register_backbone`) is served by an adapter (:mod:`recbole_derrd.backbones`); a few
cannot take a role, and are refused at start-up with the reason instead of failing mid-run:

* as a **student**, a model must learn by gradient steps from the distillation trainer's
  batches: closed-form or counting models (EASE, ItemKNN, SLIMElastic, ADMMSLIM, NCEPLRec,
  Pop, Random, AsymKNN) have nothing to train; models that need RecBole's own trainer for
  that (RaCT, RecVAE, NCL: ``<Model>Trainer``) or whole-user-row batches (DiffRec, LDiffRec:
  ``LISTWISE`` input) would lose what makes them work;
* as a **teacher**, every general recommender works: it is trained (or loaded) with RecBole's
  own trainer for its model; only a staged model (RaCT) must come as a ``teacher_checkpoint``;
* **DE** distils representations, so both sides need them (:func:`check_terms_fit`); the
  ranking terms need scores only.

Sequential recommenders (RecBole's 31) take both roles through the sequential data pipeline
(:mod:`recbole_derrd.sequential_backbones`); teacher and student must then both be sequential,
since they are compared on the same query (a training prefix).  Refused, with the reason: the
click-through-rate models (DIN, DIEN: they score labelled candidates, not a catalogue), and the
models that need more than item ids (item features: FDSA, GRU4RecF, SASRecF, S3Rec; knowledge
graph embeddings: KSR, GRU4RecKG).
"""

import importlib
import sys
import types
from importlib.machinery import ModuleSpec

from recbole.utils import InputType, ModelType

from recbole_derrd.backbones import adapter_class, register_adapter

GENERAL_PACKAGE = "recbole.model.general_recommender"
SEQUENTIAL_PACKAGE = "recbole.model.sequential_recommender"
OTHER_PACKAGES = ("recbole.model.context_aware_recommender", "recbole.model.knowledge_aware_recommender")

#: general recommenders fitted without gradient steps (closed form, counting, similarity).
NO_GRADIENT = ("ADMMSLIM", "AsymKNN", "EASE", "ItemKNN", "NCEPLRec", "Pop", "Random", "SLIMElastic")

_CANDIDATES = "labelled candidate items (a click-through-rate model: it scores given candidates, not the catalogue)"
_FEATURES = "item feature fields (selected_features)"
_KNOWLEDGE = "pre-trained knowledge-graph embeddings"
#: sequential recommenders that need more than the item ids of a prefix -> what they need
SEQUENTIAL_NEEDS = {
    "DIN": _CANDIDATES, "DIEN": _CANDIDATES,
    "FDSA": _FEATURES, "GRU4RecF": _FEATURES, "SASRecF": _FEATURES,
    "S3Rec": "item attribute fields and a pre-training stage",
    "KSR": _KNOWLEDGE, "GRU4RecKG": _KNOWLEDGE,
}

_PREDICT_DISABLED = ("its predict() is disabled in RecBole 1.2.1 (it stops with 'assert False'), and "
                     "RecBole's run script calls it to count FLOPs; it can be a teacher")
#: sequential models that cannot be a student, and why
SEQUENTIAL_STUDENT_REFUSALS = {"GRU4RecCPR": _PREDICT_DISABLED, "SASRecCPR": _PREDICT_DISABLED}

#: model classes registered by users (name -> class), found by RecBole's get_model too.
REGISTERED = {}


def _package_models(package):
    """{name: class} of the recommenders a RecBole model package exports."""
    from recbole.model.abstract_recommender import AbstractRecommender

    module = importlib.import_module(package)
    return {name: value for name, value in vars(module).items()
            if isinstance(value, type) and issubclass(value, AbstractRecommender)
            and value.__module__.startswith(package + ".")}


def general_models():
    """Names of RecBole's general recommenders, sorted."""
    return sorted(_package_models(GENERAL_PACKAGE))


def sequential_models():
    """Names of RecBole's sequential recommenders, sorted."""
    return sorted(_package_models(SEQUENTIAL_PACKAGE))


def backbone_class(name, key="model"):
    """The class of the general or sequential recommender named ``name``; a ValueError naming
    ``key`` with the reason for anything else (unknown name, context-aware model)."""
    if not isinstance(name, str) or not name:
        raise ValueError("%s=%r must name a RecBole general or sequential recommender" % (key, name))
    if name in REGISTERED:
        return REGISTERED[name]
    for package in (GENERAL_PACKAGE, SEQUENTIAL_PACKAGE):
        models = _package_models(package)
        if name in models:
            return models[name]
    for package in OTHER_PACKAGES:
        if name in _package_models(package):
            raise ValueError("%s=%r is a %s model; the plugin distils general and sequential "
                             "recommenders" % (key, name, package.rsplit(".", 1)[1].replace("_", " ")))
    raise ValueError("%s=%r is not a RecBole general or sequential recommender nor a registered "
                     "model; general recommenders: %s; sequential: %s (register your own with "
                     "recbole_derrd.register_backbone)"
                     % (key, name, ", ".join(general_models()), ", ".join(sequential_models())))


def is_sequential(name):
    """Whether the model named ``name`` is a sequential recommender (RecBole's or registered)."""
    if name in REGISTERED:
        return getattr(REGISTERED[name], "type", None) == ModelType.SEQUENTIAL
    return name in _package_models(SEQUENTIAL_PACKAGE)


def _needs_more_than_ids(model_class):
    needs = SEQUENTIAL_NEEDS.get(model_class.__name__)
    if needs and model_class.__name__ not in REGISTERED:
        return ("%s needs %s, which the plugin does not pass to a distilled model yet; id-only "
                "sequential models work (e.g. SASRec, GRU4Rec, BERT4Rec)" % (model_class.__name__, needs))
    return None


def input_type_of(model_class, settings):
    """The RecBole input type (pairwise / pointwise) of a backbone under ``settings`` (a dict or
    Config): its class attribute, else (sequential models) from its ``loss_type`` as RecBole does."""
    if hasattr(model_class, "input_type"):
        return model_class.input_type
    loss_type = settings["loss_type"] if "loss_type" in settings else None
    if loss_type == "CE":
        return InputType.POINTWISE
    if loss_type == "BPR":
        return InputType.PAIRWISE
    raise ValueError("loss_type=%r of %s must be 'CE' or 'BPR'" % (loss_type, model_class.__name__))


def needs_negatives(model_class, settings):
    """Whether a sequential backbone's training loss reads sampled negatives: its ``loss_type``
    when it has one (``BPR``: yes, ``CE``: no), else its input type (FPMC, TransRec: pairwise)."""
    loss_type = settings["loss_type"] if "loss_type" in settings else None
    if loss_type in ("BPR", "CE"):
        return loss_type == "BPR"
    return input_type_of(model_class, settings) == InputType.PAIRWISE


def check_pair(student, teacher):
    """Teacher and student must be of one kind: a sequential teacher ranks items for a prefix, a
    general one for a user, and the terms compare the two on the same query."""
    if is_sequential(student) != is_sequential(teacher):
        kinds = {True: "sequential", False: "general"}
        raise ValueError(
            "student_model=%r is %s but teacher_model=%r is %s: the terms compare teacher and student "
            "on the same query (a user, or a sequence prefix), so both must be general or both "
            "sequential" % (student, kinds[is_sequential(student)], teacher, kinds[is_sequential(teacher)]))


def student_refusal(model_class):
    """Why ``model_class`` cannot be a distilled student, or None when it can."""
    name = model_class.__name__
    needs = _needs_more_than_ids(model_class)
    if needs:
        return needs
    if name in SEQUENTIAL_STUDENT_REFUSALS and name not in REGISTERED:
        return "%s: %s" % (name, SEQUENTIAL_STUDENT_REFUSALS[name])
    if name in NO_GRADIENT or getattr(model_class, "type", None) == ModelType.TRADITIONAL:
        return ("%s is fitted without gradient steps (closed form or counting): it has nothing to "
                "learn from distillation; it can be a teacher for the ranking terms" % name)
    import recbole.trainer

    if name not in REGISTERED and hasattr(recbole.trainer, name + "Trainer"):
        return ("%s trains with RecBole's own %sTrainer, which a distilled student's trainer does "
                "not run; it can be a teacher" % (name, name))
    if getattr(model_class, "type", None) == ModelType.SEQUENTIAL:
        return None  # sequential models train on RecBole's prefix batches (pointwise or pairwise)
    if getattr(model_class, "input_type", None) not in (InputType.POINTWISE, InputType.PAIRWISE):
        return ("%s reads whole user rows (%s input), which the distillation batches do not "
                "provide; it can be a teacher" % (name, getattr(model_class, "input_type", None)))
    return None


def teacher_refusal(model_class, checkpoint_given=False):
    """Why the plugin cannot train ``model_class`` as a teacher, or None.  Staged models (RaCT:
    actor pre-training, critic pre-training, then fine-tuning from a saved file) cannot be
    trained in one call; trained with RecBole and given as ``teacher_checkpoint`` they teach."""
    needs = _needs_more_than_ids(model_class)
    if needs:
        return needs
    if checkpoint_given:
        return None
    import recbole.trainer

    trainer = getattr(recbole.trainer, model_class.__name__ + "Trainer", None)
    if isinstance(trainer, type) and issubclass(trainer, recbole.trainer.PretrainTrainer):
        return ("%s trains in stages (%sTrainer: pre-training, then fine-tuning from a saved "
                "file), which one teacher training cannot run; train it with RecBole and give the "
                "fine-tuned checkpoint as teacher_checkpoint" % (model_class.__name__, model_class.__name__))
    return None


def check_backbone(name, key, checkpoint_given=False):
    """Raise a clear error when config ``key`` (``student_model`` / ``teacher_model``) names a
    model that cannot take that role (a teacher given as ``teacher_checkpoint`` is not trained
    here: ``checkpoint_given``)."""
    model_class = backbone_class(name, key)
    if key == "student_model":
        reason = student_refusal(model_class)
    else:
        reason = teacher_refusal(model_class, checkpoint_given)
    if reason:
        raise ValueError("%s=%r is refused: %s" % (key, name, reason))
    return model_class


def check_terms_fit(model_name, terms, student, teacher):
    """Teacher and student of one kind (:func:`check_pair`), terms that know their queries
    (:func:`check_sequential_terms`), and DE (any term needing representations) with
    representations on both sides."""
    check_pair(student, teacher)
    check_sequential_terms(model_name, terms, student)
    for term in terms:
        if not getattr(term, "needs_representations", False):
            continue
        for key, backbone in (("teacher_model", teacher), ("student_model", student)):
            if not adapter_class(backbone).has_representations:
                raise ValueError(
                    "%s: its %s term distils user and item representations, but %s=%r only scores "
                    "(no representations); distil it with the ranking terms (%s), "
                    "or use a backbone with representations (e.g. %s)"
                    % (model_name, term.name, key, backbone,
                       "RRD" if is_sequential(backbone) else "RRD, RD, CD, IRRRD, RCEKD",
                       ", ".join(representation_models(is_sequential(backbone)))))


def check_sequential_terms(model_name, terms, student):
    """A sequential student's terms must know sequence queries (DE, RRD)."""
    if not is_sequential(student):
        return
    for term in terms:
        if not getattr(term, "sequential_queries", False):
            raise ValueError(
                "%s: its %s term ranks or distils per user, but student_model=%r is sequential (its "
                "queries are sequence prefixes); for sequential backbones use DE, RRD or DERRD"
                % (model_name, term.name, student))


def representation_models(sequential=False):
    """General (or sequential) recommenders whose adapter gives DE representations, sorted."""
    names = sequential_models() if sequential else general_models()
    return [name for name in names + sorted(REGISTERED)
            if adapter_class(name).has_representations and is_sequential(name) == sequential
            and not SEQUENTIAL_NEEDS.get(name)]


def register_backbone(model_class, adapter=None):
    """Make a model class of your own a backbone: RecBole's ``get_model`` (and so
    ``student_model`` / ``teacher_model``) finds it by its class name, served by ``adapter``
    (a :class:`~recbole_derrd.backbones.BackboneAdapter` subclass; default: the adapter of the
    nearest RecBole ancestor, e.g. BPR's for a BPR subclass whose embeddings keep their names,
    else the score-only adapter).  Returns ``model_class``, so it works as a decorator.

    Call it at import time of a module (not under ``if __name__ == "__main__"``): spawned
    workers (DDP) re-import modules, not the main script's body."""
    from recbole.model.abstract_recommender import GeneralRecommender, SequentialRecommender

    if not (isinstance(model_class, type) and issubclass(model_class, (GeneralRecommender, SequentialRecommender))):
        raise TypeError("register_backbone(%r): a RecBole GeneralRecommender or SequentialRecommender "
                        "subclass is required" % (model_class,))
    name = model_class.__name__
    sequential = issubclass(model_class, SequentialRecommender)
    package = SEQUENTIAL_PACKAGE if sequential else GENERAL_PACKAGE
    stock = dict(_package_models(GENERAL_PACKAGE), **_package_models(SEQUENTIAL_PACKAGE))
    if name in stock and stock[name] is not model_class:
        raise ValueError("register_backbone: %r is the name of RecBole's own model; give your class "
                         "another name" % name)
    if adapter is None:
        from recbole_derrd.backbones import ScoreOnlyAdapter
        from recbole_derrd.sequential_backbones import SequentialScoreOnlyAdapter

        ancestor = next((c.__name__ for c in model_class.__mro__[1:] if c.__name__ in stock), None)
        adapter = (adapter_class(ancestor) if ancestor
                   else SequentialScoreOnlyAdapter if sequential else ScoreOnlyAdapter)
    register_adapter(name, adapter)
    REGISTERED[name] = model_class
    # get_model imports recbole.model.<package>.<name lower>: give it a module holding the class
    module_name = "%s.%s" % (package, name.lower())
    module = sys.modules.get(module_name)
    if module is None or getattr(module, name, None) is not model_class:
        module = types.ModuleType(module_name)
        module.__spec__ = ModuleSpec(module_name, None)
        setattr(module, name, model_class)
        sys.modules[module_name] = module
    return model_class


def model_size(model):
    """Numbers a model keeps to score: its parameters and buffers, plus the arrays a closed-form
    model holds outside them (e.g. EASE's item-item weights, ItemKNN's sparse similarities;
    the interaction matrices and precomputed predictions they keep are derived, not counted)."""
    import numpy as np
    import scipy.sparse
    import torch

    size = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    for name in getattr(model, "other_parameter_name", None) or ():
        value = getattr(model, name, None)
        if "interaction" in name or "pred" in name or "restore" in name or value is None:
            continue
        if scipy.sparse.issparse(value):
            size += value.nnz
        elif isinstance(value, (np.ndarray, torch.Tensor)):
            size += int(np.prod(value.shape))
    return size
