"""A restricted unpickler for RecBole checkpoints, passed to ``torch.load`` as ``pickle_module``.

Why not torch's ``weights_only=True``: RecBole checkpoints pickle the ``Config`` (and through
it model classes, enums and a yaml loader class), which it rejects; and allow-listing ``Config``
there would let a file *call* it with arguments, and ``Config(...)`` evaluates every string of
its config dict.  Why not plain pickle: a crafted file runs any code it likes.

So this unpickler checks what each opcode *does*, not only which names it resolves:

* **globals** resolve from one exact table of ``(module, name)`` pairs built from objects the
  plugin imported itself (every RecBole model class, the plugin's models, RecBole's enums, the
  scipy sparse containers, tensor and array rebuilders).  A name outside the table is refused
  before anything is imported.
* **calls** (``REDUCE``) are allowed only for rebuild functions whose arguments are checked
  (tensor rebuilds without backward hooks, ``numpy`` array and scalar reconstruction, dtypes,
  devices, enum look-ups).  Classes such as ``Config`` or a model class are never called.
* **new objects** (``NEWOBJ``) are created without arguments and without running ``__init__``:
  a ``Config`` comes back as its saved *state*, not as a constructor call.
* **state** (``BUILD``) is set only on instances of the types a RecBole checkpoint carries
  (the ``Config``, scipy sparse matrices, numpy arrays and dtypes, a state dict's metadata),
  only as a dict of plain data, and never on a class.
* protocol-0/1 instantiation (``INST``, ``OBJ``) and the copyreg extension registry are refused.
"""

import codecs
import collections
import enum
import pickle

#: opcodes a RecBole checkpoint never needs; refused outright.
REFUSED_OPCODES = {pickle.INST: "INST", pickle.OBJ: "OBJ", pickle.EXT1: "EXT1",
                   pickle.EXT2: "EXT2", pickle.EXT4: "EXT4"}
#: numpy 1.x writes ``numpy.core``, numpy 2 ``numpy._core``: both names map to one object.
NUMPY_CORE_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


class UnsafeCheckpointError(pickle.UnpicklingError):
    """The file asked for something RecBole checkpoints never contain."""


def _refuse(what):
    raise UnsafeCheckpointError("refusing %s: RecBole checkpoints never contain it "
                                "(the file may carry code)" % what)


# --------------------------------------------------------------------------- the allowed table
class _Allowed:
    """Every global a checkpoint may name, and what may be done with each, built once."""

    def __init__(self):
        import numpy as np
        import scipy.sparse
        import torch
        import torch._utils
        import yaml
        from numpy.core import multiarray
        from recbole.config.configurator import Config
        from recbole.utils import enum_type

        from recbole_derrd import model as plugin_models

        self.Config = Config
        self.model_classes = frozenset(model_classes())
        self.enums = frozenset(v for v in vars(enum_type).values()
                               if isinstance(v, type) and issubclass(v, enum.Enum)
                               and v.__module__ == enum_type.__name__)
        self.sparse = frozenset(getattr(scipy.sparse, "%s_%s" % (fmt, kind))
                                for fmt in ("csr", "csc", "coo", "bsr", "dia", "dok", "lil")
                                for kind in ("matrix", "array") if hasattr(scipy.sparse, "%s_%s" % (fmt, kind)))
        self.arrays = frozenset((np.ndarray, np.matrix))
        self.yaml_loaders = frozenset((yaml.loader.FullLoader,))
        self.torch_dtypes = {name: value for name, value in vars(torch).items()
                             if isinstance(value, torch.dtype)}
        self.reducers = {
            torch._utils._rebuild_tensor_v2: _check_rebuild_tensor,
            torch._utils._rebuild_parameter: _check_rebuild_parameter,
            torch._utils._rebuild_parameter_with_state: _check_rebuild_parameter,
            torch.device: _check_device,
            torch.Size: _check_size,
            multiarray._reconstruct: self._check_reconstruct,
            multiarray.scalar: _check_scalar,
            np.dtype: _check_dtype,
            collections.OrderedDict: _check_ordered_dict,
            set: _check_collection,
            frozenset: _check_collection,
            codecs.encode: _check_latin1_bytes,
        }
        table = {}
        for value in (list(self.model_classes) + list(self.enums) + list(self.sparse)
                      + list(self.arrays) + list(self.yaml_loaders) + [Config, collections.OrderedDict]):
            table[(value.__module__, value.__qualname__)] = value
        for function in (torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter,
                         torch._utils._rebuild_parameter_with_state):
            table[("torch._utils", function.__name__)] = function
        table.update({("torch", "device"): torch.device, ("torch", "Size"): torch.Size,
                      ("numpy", "dtype"): np.dtype, ("numpy", "ndarray"): np.ndarray,
                      ("numpy", "matrix"): np.matrix,
                      ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
                      ("_codecs", "encode"): codecs.encode})
        for module in NUMPY_CORE_MODULES:
            table[(module, "_reconstruct")] = multiarray._reconstruct
            table[(module, "scalar")] = multiarray.scalar
        table.update({("torch", name): value for name, value in self.torch_dtypes.items()})
        for name in ("RD", "CD"):  # their module before the distillation terms (0.1.0 checkpoints)
            table[("recbole_derrd.model.baselines", name)] = getattr(plugin_models, name)
        self.table = table
        self.leaf_types = (torch.Tensor, torch.device, torch.dtype, np.ndarray, np.generic, np.dtype)

    def _check_reconstruct(self, args):
        if len(args) != 3 or args[0] not in self.arrays or not _is_int_tuple(args[1]) \
                or not isinstance(args[2], bytes):
            _refuse("numpy._reconstruct%r" % (args,))


_ALLOWED = None


def allowed():
    """The table, built on first use (it imports RecBole's model packages)."""
    global _ALLOWED
    if _ALLOWED is None:
        _ALLOWED = _Allowed()
    return _ALLOWED


def model_classes():
    """Every RecBole 1.2.1 model class importable here, and the plugin's models.

    RecBole's ``exlib_recommender`` package needs lightgbm and xgboost; it is skipped where
    they are missing (their checkpoints are not torch files anyway).
    """
    import importlib

    from recbole.model.abstract_recommender import AbstractRecommender

    from recbole_derrd.registration import PLUGIN_MODELS

    found = set(PLUGIN_MODELS.values())
    for package in ("general_recommender", "sequential_recommender", "context_aware_recommender",
                    "knowledge_aware_recommender", "exlib_recommender"):
        try:
            module = importlib.import_module("recbole.model." + package)
        except ImportError:
            continue
        found.update(v for v in vars(module).values()
                     if isinstance(v, type) and issubclass(v, AbstractRecommender))
    return found


def resolve(module, name):
    """The allowed object for ``module.name`` (nothing is imported); raise for anything else."""
    try:
        return allowed().table[(module, name)]
    except (KeyError, TypeError):
        _refuse("global %s.%s" % (module, name))


# --------------------------------------------------------------------------- argument checks
def _is_int_tuple(value):
    return isinstance(value, tuple) and all(type(v) is int for v in value)


def _check_rebuild_tensor(args):
    import torch

    if not 6 <= len(args) <= 7 or not isinstance(args[0], (torch.TypedStorage, torch.UntypedStorage)) \
            or type(args[1]) is not int or not _is_int_tuple(tuple(args[2])) \
            or not _is_int_tuple(tuple(args[3])) or type(args[4]) is not bool or args[5]:
        _refuse("a tensor rebuild with unexpected arguments or backward hooks")
    if len(args) == 7 and args[6] is not None and not (
            isinstance(args[6], dict) and all(isinstance(k, str) and type(v) is bool for k, v in args[6].items())):
        _refuse("a tensor rebuild with unexpected metadata")


def _check_rebuild_parameter(args):
    import torch

    if len(args) not in (3, 4) or not isinstance(args[0], torch.Tensor) or type(args[1]) is not bool \
            or args[2] or (len(args) == 4 and args[3]):
        _refuse("a parameter rebuild with backward hooks or state")


def _check_device(args):
    if not 1 <= len(args) <= 2 or not isinstance(args[0], str) or (len(args) == 2 and type(args[1]) is not int):
        _refuse("torch.device%r" % (args,))


def _check_size(args):
    if len(args) != 1 or not _is_int_tuple(tuple(args[0])):
        _refuse("torch.Size%r" % (args,))


def _check_scalar(args):
    import numpy as np

    if len(args) != 2 or not isinstance(args[0], np.dtype) or not isinstance(args[1], bytes):
        _refuse("numpy scalar%r" % (args,))


def _check_dtype(args):
    if len(args) != 3 or not isinstance(args[0], str) or not all(type(a) is bool for a in args[1:]):
        _refuse("numpy.dtype%r" % (args,))


def _check_ordered_dict(args):
    if args not in ((),) and not (len(args) == 1 and isinstance(args[0], list)):
        _refuse("OrderedDict%r" % (args,))


def _check_latin1_bytes(args):
    """Protocol 2 writes a ``bytes`` object as ``_codecs.encode(text, "latin1")``."""
    if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
        _refuse("_codecs.encode%r" % (args,))


def _check_collection(args):
    if len(args) != 1 or not isinstance(args[0], list):
        _refuse("a set built from %r" % (args,))


def is_plain(value, extra_leaves=(), _seen=None):
    """True when ``value`` is data only: built-in scalars and containers, tensors, arrays,
    devices, dtypes, RecBole enum members, and the objects in ``extra_leaves``."""
    table = allowed()
    if value is None or type(value) in (bool, int, float, complex, str, bytes):
        return True
    if isinstance(value, table.leaf_types) or type(value) in table.enums:
        return True
    try:
        if value in extra_leaves:
            return True
    except TypeError:
        pass
    if type(value) in (list, tuple, set, frozenset, dict, collections.OrderedDict):
        _seen = set() if _seen is None else _seen
        if id(value) in _seen:
            return True
        _seen.add(id(value))
        items = list(value.items()) if isinstance(value, dict) else [(v, None) for v in value]
        return all(is_plain(k, extra_leaves, _seen) and is_plain(v, extra_leaves, _seen)
                   for k, v in items)
    return False


def _check_state_dict(state, what, extra_leaves=()):
    if type(state) is not dict or not all(isinstance(k, str) and not k.startswith("__") for k in state) \
            or not is_plain(state, extra_leaves):
        _refuse("%s state that is not a dict of plain data" % what)


# --------------------------------------------------------------------------- the unpickler
class Unpickler(pickle._Unpickler):
    """:class:`pickle.Unpickler` (pure-Python) with every object-creating opcode checked."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module, name):
        return resolve(module, name)

    def _call(self, func, args):
        table = allowed()
        if not isinstance(args, tuple):
            _refuse("a call with non-tuple arguments")
        if isinstance(func, type) and func in table.enums:
            if len(args) != 1 or not is_plain(args[0]):
                _refuse("enum %s called with %r" % (func.__name__, args))
            return func(*args)
        try:
            check = table.reducers.get(func)
        except TypeError:
            check = None
        if check is None:
            _refuse("a call of %s" % getattr(func, "__qualname__", type(func).__name__))
        check(args)
        return func(*args)

    def load_reduce(self):
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    dispatch[pickle.REDUCE[0]] = load_reduce

    def _new(self, cls, args, kwargs):
        table = allowed()
        if not (cls is table.Config or cls in table.sparse):
            _refuse("creating %s" % getattr(cls, "__qualname__", type(cls).__name__))
        if args or kwargs:
            _refuse("creating %s with arguments" % cls.__qualname__)
        return cls.__new__(cls)  # no __init__: the state comes from BUILD, checked

    def load_newobj(self):
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    dispatch[pickle.NEWOBJ[0]] = load_newobj

    def load_newobj_ex(self):
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex

    def load_build(self):
        import numpy as np

        table = allowed()
        state = self.stack.pop()
        inst = self.stack[-1]
        kind = type(inst)
        if kind is table.Config:
            leaves = table.model_classes | table.yaml_loaders
            _check_state_dict(state, "Config", leaves)
            inst.__dict__.update(state)
        elif kind in table.sparse:
            _check_state_dict(state, "sparse matrix")
            inst.__dict__.update(state)
        elif kind is collections.OrderedDict:
            if type(state) is not dict or set(state) != {"_metadata"} or not is_plain(state):
                _refuse("OrderedDict state other than a state dict's _metadata")
            inst.__dict__.update(state)
        elif kind in table.arrays or isinstance(inst, np.dtype):
            if type(state) is not tuple or not is_plain(state):
                _refuse("%s state that is not plain data" % kind.__name__)
            inst.__setstate__(state)
        else:
            _refuse("setting the state of %s" % getattr(inst, "__qualname__", kind.__qualname__))

    dispatch[pickle.BUILD[0]] = load_build

    # Containers are filled only when they are the built-in container the opcode is for.
    def _target(self, types, opcode):
        target = self.stack[-1]
        if type(target) not in types:
            _refuse("%s on %s" % (opcode, type(target).__qualname__))
        return target

    def load_append(self):
        value = self.stack.pop()
        self._target((list,), "APPEND").append(value)

    dispatch[pickle.APPEND[0]] = load_append

    def load_appends(self):
        items = self.pop_mark()
        self._target((list,), "APPENDS").extend(items)

    dispatch[pickle.APPENDS[0]] = load_appends

    def load_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._target((dict, collections.OrderedDict), "SETITEM")[key] = value

    dispatch[pickle.SETITEM[0]] = load_setitem

    def load_setitems(self):
        items = self.pop_mark()
        target = self._target((dict, collections.OrderedDict), "SETITEMS")
        for i in range(0, len(items), 2):
            target[items[i]] = items[i + 1]

    dispatch[pickle.SETITEMS[0]] = load_setitems

    def load_additems(self):
        items = self.pop_mark()
        self._target((set,), "ADDITEMS").update(items)

    dispatch[pickle.ADDITEMS[0]] = load_additems


def _refused_opcode(label):
    def load_refused(self):
        _refuse("pickle opcode %s" % label)
    return load_refused


for _code, _label in REFUSED_OPCODES.items():
    Unpickler.dispatch[_code[0]] = _refused_opcode(_label)


def load(file, **kwargs):
    return Unpickler(file, **kwargs).load()


# torch.load(pickle_module=...) also reads these names from the module it is given.
dump = pickle.dump
dumps = pickle.dumps
Pickler = pickle.Pickler
HIGHEST_PROTOCOL = pickle.HIGHEST_PROTOCOL
DEFAULT_PROTOCOL = pickle.DEFAULT_PROTOCOL
UnpicklingError = pickle.UnpicklingError
__all__ = ["Unpickler", "load", "resolve", "is_plain", "model_classes", "UnsafeCheckpointError"]
