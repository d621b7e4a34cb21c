"""RecBole models added by the plugin: a student backbone trained with DE and/or RRD."""

from recbole_derrd.model.distilled import DistilledRecommender, DE, RRD, DERRD

__all__ = ["DistilledRecommender", "DE", "RRD", "DERRD"]
