"""RecBole models added by the plugin: a student backbone plus distillation terms."""

from recbole_derrd.model.distilled import CD, DE, DEIRRRD, DERRD, HTD, IRRRD, RCEKD, RD, RRD, DistilledRecommender

__all__ = ["DistilledRecommender", "DE", "RRD", "DERRD", "RD", "CD", "IRRRD", "DEIRRRD", "HTD", "RCEKD"]
