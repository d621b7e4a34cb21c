"""RecBole models added by the plugin: a student backbone plus distillation terms."""

from recbole_derrd.model.distilled import CD, DE, DERRD, HTD, IRRRD, RCEKD, RD, RRD, DistilledRecommender

__all__ = ["DistilledRecommender", "DE", "RRD", "DERRD", "RD", "CD", "IRRRD", "HTD", "RCEKD"]
