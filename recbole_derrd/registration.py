"""Make RecBole find the plugin's models, trainers and property files, unchanged.

* Models: RecBole's ``get_model(name)`` imports ``recbole.model.<sub>.<name.lower()>``; the
  plugin's model module is registered in ``sys.modules`` under those names (it has a real
  ``__spec__``, which ``importlib.util.find_spec`` requires).
* Trainers: ``get_trainer`` looks up ``recbole.trainer.<Model>Trainer``.
* Properties: RecBole only reads yaml files beside its own package, so ``Config`` learns to
  layer the plugin's files (see :mod:`recbole_derrd.config`), to take the model type
  (general/sequential) and input type (pairwise/pointwise) from the student backbone, and
  checks the run's settings and the dataset's files before any training.  Both hooks act only
  on plugin models.
"""

import os
import sys

import recbole.trainer
from recbole.config import Config
from recbole.utils import InputType, ModelType, get_model

from recbole_derrd import config as plugin_config
from recbole_derrd.backbone_support import input_type_of, is_sequential, needs_negatives
from recbole_derrd.compat import patch_method
from recbole_derrd.data_checks import check_dataset_files
from recbole_derrd import model as plugin_models
from recbole_derrd.distillation_trainer import DistillationTrainer
from recbole_derrd.settings_checks import check_run_settings
from recbole_derrd_hook import MODEL_NAMES, MODEL_PACKAGE

#: name -> model class, for every name of the start-up hook's one list.
PLUGIN_MODELS = {name: getattr(plugin_models, name) for name in MODEL_NAMES}


def is_plugin_model(model_class):
    return getattr(model_class, "is_distillation_model", False)


def _load_internal_config_dict(self, model, model_class, dataset):
    _load_internal_config_dict.original(self, model, model_class, dataset)
    if not is_plugin_model(model_class):
        return
    self.internal_config_dict.update(
        plugin_config.layered_properties(model_class, self.external_config_dict, self.yaml_loader))
    # RecBole's dataset yamls stay above the model layers, as for stock models.
    root = plugin_config.recbole_properties_dir()
    for path in (os.path.join(root, "dataset", "sample.yaml"),
                 os.path.join(root, "dataset", dataset + ".yaml")):
        if os.path.isfile(path):
            self._update_internal_config_dict(path)
    # A sequential student makes the run sequential: RecBole then builds the sequential dataset
    # (prefix augmentation) and loaders, and layers its sequential defaults (leave-one-out by
    # time, full ranking), as it does for a stock sequential model.
    student = self.internal_config_dict["student_model"]
    if self.external_config_dict.get("student_model"):
        student = self.external_config_dict["student_model"]
    if is_sequential(student):
        self.internal_config_dict["MODEL_TYPE"] = ModelType.SEQUENTIAL
        self._update_internal_config_dict(os.path.join(root, "quick_start_config", "sequential.yaml"))


def _set_default_parameters(self):
    _set_default_parameters.original(self)
    if is_plugin_model(self.model_class):
        settings = self.final_config_dict
        student = get_model(settings["student_model"])
        settings["MODEL_INPUT_TYPE"] = input_type_of(student, settings)
        check_sequential_sampling(settings)
        check_run_settings(self)
        check_dataset_files(self)


def check_sequential_sampling(settings):
    """RecBole's rule for a sequential model with a CE loss (no sampled negatives), applied to
    the student, and a teacher whose loss needs negatives the student's batches do not carry."""
    if settings["MODEL_TYPE"] != ModelType.SEQUENTIAL:
        return
    negatives = plugin_config.samples_negatives(settings.get("train_neg_sample_args"))
    if settings["MODEL_INPUT_TYPE"] == InputType.POINTWISE and negatives:
        raise ValueError("train_neg_sample_args=%r must be None when the sequential student's loss_type is "
                         "'CE' (as for RecBole's own sequential models): set train_neg_sample_args: ~"
                         % (settings["train_neg_sample_args"],))
    teacher = settings["teacher_model"]
    if needs_negatives(get_model(teacher), plugin_config.teacher_settings(settings)) and not negatives:
        raise ValueError("teacher_model=%r trains with sampled negatives (a BPR loss), but the student's batches "
                         "carry none (train_neg_sample_args is None): give the teacher t_loss_type: CE where it "
                         "has one, or the student loss_type: BPR with train_neg_sample_args" % (teacher,))


def register():
    """Register models, trainers and the Config hooks with RecBole (idempotent)."""
    for name, model_class in PLUGIN_MODELS.items():
        sys.modules["%s.%s" % (MODEL_PACKAGE, name.lower())] = sys.modules[model_class.__module__]
        setattr(recbole.trainer, name + "Trainer", DistillationTrainer)
    patch_method(Config, _load_internal_config_dict)
    patch_method(Config, _set_default_parameters)
