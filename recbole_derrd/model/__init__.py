"""RecBole models added by the plugin: a student backbone trained with DE and/or RRD, or with
the baselines RD and CD."""

from recbole_derrd.model.distilled import DistilledRecommender, DE, RRD, DERRD
from recbole_derrd.model.baselines import CD, RD

__all__ = ["DistilledRecommender", "DE", "RRD", "DERRD", "RD", "CD"]
