"""Make RecBole find the plugin's models, trainers and property files, unchanged.

* Models: RecBole's ``get_model(name)`` imports ``recbole.model.<sub>.<name.lower()>``; the
  plugin's model module is registered in ``sys.modules`` under those names (it has a real
  ``__spec__``, which ``importlib.util.find_spec`` requires).
* Trainers: ``get_trainer`` looks up ``recbole.trainer.<Model>Trainer``.
* Properties: RecBole only reads yaml files beside its own package, so ``Config`` learns to
  layer the plugin's files (see :mod:`recbole_derrd.config`) and to take the model input type
  (pairwise/pointwise) from the student backbone, and checks the run's settings and the
  dataset's files before any training.  Both hooks act only on plugin models.
"""

import os
import sys

import recbole.trainer
from recbole.config import Config
from recbole.utils import get_model

from recbole_derrd import config as plugin_config
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


def _set_default_parameters(self):
    _set_default_parameters.original(self)
    if is_plugin_model(self.model_class):
        student = get_model(self.final_config_dict["student_model"])
        self.final_config_dict["MODEL_INPUT_TYPE"] = student.input_type
        check_run_settings(self)
        check_dataset_files(self)


def register():
    """Register models, trainers and the Config hooks with RecBole (idempotent)."""
    for name, model_class in PLUGIN_MODELS.items():
        sys.modules["%s.%s" % (MODEL_PACKAGE, name.lower())] = sys.modules[model_class.__module__]
        setattr(recbole.trainer, name + "Trainer", DistillationTrainer)
    patch_method(Config, _load_internal_config_dict)
    patch_method(Config, _set_default_parameters)
