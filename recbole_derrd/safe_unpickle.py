"""A restricted unpickler for RecBole checkpoints, passed to ``torch.load`` as ``pickle_module``.

RecBole checkpoints pickle the ``Config`` (and through it the model class, enums, a yaml loader
class), which torch's ``weights_only=True`` rejects; plain unpickling would run any code a
crafted file carries.  This unpickler resolves only the globals a RecBole checkpoint
legitimately holds and refuses everything else (``os.system``, ``builtins.eval``, ...).
"""

import enum
import importlib
import pickle

import torch

#: (module, name) pairs allowed as they are.
ALLOWED = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("torch", "device"),
    ("torch", "Size"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.nn.parameter", "Parameter"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("recbole.config.configurator", "Config"),
    ("yaml.loader", "FullLoader"),
}
#: module prefixes whose RecBole model classes (AbstractRecommender subclasses) are allowed.
MODEL_MODULE_PREFIXES = ("recbole.model.", "recbole_derrd.model.")
ENUM_MODULE = "recbole.utils.enum_type"
#: scipy sparse containers: RecBole's traditional models (ItemKNN, ...) keep their similarity
#: matrices in checkpoints; they unpickle as numpy arrays set on an instance, nothing runs.
SPARSE_CONTAINERS = frozenset("%s_%s" % (fmt, kind) for fmt in ("csr", "csc", "coo", "bsr", "dia", "dok", "lil")
                              for kind in ("matrix", "array"))


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file asked for a global that RecBole checkpoints never contain."""


def _is_numpy_dtype_class(module, name):
    return module.startswith("numpy") and name.endswith("DType")


def resolve(module, name):
    """Return the allowed object for ``module.name``; raise for anything else."""
    if (module, name) in ALLOWED or _is_numpy_dtype_class(module, name):
        return getattr(importlib.import_module(module), name)
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module.startswith("scipy.sparse") and name in SPARSE_CONTAINERS:
        import scipy.sparse

        value = getattr(importlib.import_module(module), name, None)
        if isinstance(value, type) and value is getattr(scipy.sparse, name, None):
            return value
    if module == ENUM_MODULE:
        value = getattr(importlib.import_module(module), name, None)
        if isinstance(value, type) and issubclass(value, enum.Enum):
            return value
    if module.startswith(MODEL_MODULE_PREFIXES):
        from recbole.model.abstract_recommender import AbstractRecommender

        value = getattr(importlib.import_module(module), name, None)
        if isinstance(value, type) and issubclass(value, AbstractRecommender):
            return value
    raise UnsafeCheckpointError(
        "refusing to load global %s.%s: RecBole checkpoints never contain it "
        "(the file may carry code)" % (module, name))


class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        return resolve(module, name)


def load(file, **kwargs):
    return Unpickler(file, **kwargs).load()


# torch.load(pickle_module=...) also reads these names from the module it is given.
dump = pickle.dump
dumps = pickle.dumps
Pickler = pickle.Pickler
HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
DEFAULT_PROTOCOL = pickle.DEFAULT_PROTOCOL
UnpicklingError = pickle.UnpicklingError
__all__ = ["Unpickler", "load", "resolve", "UnsafeCheckpointError"]
