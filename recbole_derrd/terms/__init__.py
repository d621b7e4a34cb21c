"""Distillation terms: one module per method part; a registered model is a student + terms.

Adding a method is one module here (a :class:`DistillationTerm` subclass) plus one yaml file
under ``properties/model/`` and a few lines in :mod:`recbole_derrd.model`.
"""

from recbole_derrd.terms.base import Batch, DistillationContext, DistillationTerm
from recbole_derrd.terms.cd import CD
from recbole_derrd.terms.de import DE
from recbole_derrd.terms.htd import HTD
from recbole_derrd.terms.ir import IR
from recbole_derrd.terms.rce import RCE
from recbole_derrd.terms.rd import RD
from recbole_derrd.terms.rrd import RRD

__all__ = ["Batch", "DistillationContext", "DistillationTerm", "DE", "RRD", "RD", "CD", "IR", "HTD", "RCE"]
