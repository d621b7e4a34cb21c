"""recbole-derrd: DE-RRD knowledge distillation (Kang et al., CIKM 2020) as a RecBole plugin.

``import recbole_derrd`` registers the models ``DE``, ``RRD`` and ``DERRD``, and the baselines
``RD`` and ``CD`` (and their trainers) with RecBole, so RecBole's own
``run_recbole(model='DERRD', ...)``, ``get_model``, ``get_trainer`` and ``HyperTuning`` use
them unchanged.
"""

from recbole_derrd import compat

compat.apply()

from recbole_derrd.registration import PLUGIN_MODELS, register  # noqa: E402

register()

from recbole_derrd.config import protocol_file, tuning_file  # noqa: E402
from recbole_derrd.backbones import BackboneAdapter, register_adapter  # noqa: E402
from recbole_derrd.backbone_support import register_backbone  # noqa: E402
from recbole_derrd.model import CD, DE, DEIRRRD, DERRD, HTD, IRRRD, RCEKD, RD, RRD, DistilledRecommender  # noqa: E402
from recbole_derrd.distillation_trainer import DistillationTrainer  # noqa: E402
from recbole_derrd.trainer import safe_trainer_class  # noqa: E402

from recbole_derrd.version import __version__  # noqa: E402

__all__ = list(PLUGIN_MODELS) + ["DistilledRecommender", "DistillationTrainer", "safe_trainer_class",
                                  "PLUGIN_MODELS", "register", "protocol_file", "tuning_file", "__version__",
                                  "BackboneAdapter", "register_adapter", "register_backbone"]
