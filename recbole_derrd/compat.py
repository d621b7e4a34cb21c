"""Every work-around that RecBole 1.2.1 needs on today's Python stack, in one place.

RecBole 1.2.1 (the newest release) predates numpy 2, pandas 3, setuptools 82, scipy 1.13 and
torch 2.6.  Breaks that a version pin handles are pinned in ``setup.py`` and checked here at
import time, so a wrong environment fails with a message that names the package instead of a
confusing ``AttributeError`` deep inside RecBole.  Breaks that a pin cannot handle are worked
around here, deliberately and narrowly:

* torch >= 2.6 loads with ``weights_only=True`` by default, which rejects every RecBole
  checkpoint (they pickle the ``Config``).  :func:`recbole_derrd.checkpoints.load_checkpoint`
  is the one place the plugin reads a checkpoint, through a restricted unpickler;
  ``torch.load`` itself is never patched.
* scipy >= 1.13 removed ``dok_matrix._update``, used by LightGCN/NGCF/GCMC/NCL/SpectralCF to
  build their adjacency matrix.  :func:`install_scipy_dok_update` restores it.
* NCL's k-means asks faiss for a GPU (``gpu=True``), which faiss-cpu cannot give:
  :func:`install_ncl_cpu_kmeans` runs the same k-means on the GPUs faiss has, or on the CPU.
* RecBole's ``sine.py`` (a sequential model) calls ``torch.autograd.set_detect_anomaly(True)``
  when it is imported, which switches autograd's debugging mode on for the whole process: every
  operation then records its stack trace, and training runs about twice as slow.  Any import of
  RecBole's sequential package does it (the safe unpickler's table of model classes did, so
  every run that loaded a cached teacher trained in that mode).  :func:`import_sequential_models`
  imports the package once, restoring the mode; later imports then find it loaded.
* RecBole's ``init_logger`` calls ``colorama.init`` on every run, and colorama 0.4.x wraps the
  *current* ``sys.stdout`` each time: one more wrapper per run, until a process that runs a few
  hundred trainings (a comparison, the support matrix, a hyper-parameter search) dies of a
  RecursionError when it prints.  :func:`install_colorama_init_once` wraps it once.
* RecBole's distributed path assumes CUDA and races on folder creation: the patches live with
  the rank helpers in :mod:`recbole_derrd.distributed`; :func:`apply` installs them.
"""

import re
import sys
import warnings
from importlib import metadata

#: package -> (exclusive upper bound, why).  Mirrors ``install_requires`` in setup.py.
UPPER_BOUNDS = {
    "numpy": ((2,), "RecBole uses np.float_ and ray 2.6.3 uses np.bool8, both removed in numpy 2"),
    "pandas": ((3,), "pandas 3 makes RecBole's fillna a silent no-op and breaks token_seq fields"),
    "setuptools": ((82,), "ray 2.6.3 (imported by recbole.quick_start) needs pkg_resources"),
}
MAX_PYTHON = (3, 12)  # exclusive: ray 2.6.3, a RecBole dependency, has no wheel for 3.12+


def _version_tuple(text):
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def stack_problems(versions, python_version=None):
    """Return a readable problem per package whose version RecBole 1.2.1 cannot run with.

    ``versions`` maps a distribution name to its version string (or None when absent).
    """
    problems = []
    python_version = tuple(python_version or sys.version_info[:2])
    if python_version >= MAX_PYTHON:
        problems.append(
            "Python %s: RecBole 1.2.1 needs Python < %s (ray 2.6.3 has no wheel for it)"
            % (".".join(map(str, python_version)), ".".join(map(str, MAX_PYTHON)))
        )
    for name, (bound, why) in UPPER_BOUNDS.items():
        found = versions.get(name)
        if found is not None and _version_tuple(found) >= bound:
            problems.append(
                "%s %s is installed but must be < %s: %s"
                % (name, found, ".".join(map(str, bound)), why)
            )
    return problems


def installed_versions():
    found = {}
    for name in UPPER_BOUNDS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def check_stack():
    """Fail early, naming the package, when the environment cannot run RecBole 1.2.1."""
    problems = stack_problems(installed_versions())
    if problems:
        raise RuntimeError(
            "recbole-derrd: this environment cannot run RecBole 1.2.1:\n  - "
            + "\n  - ".join(problems)
            + "\nInstall with the pinned requirements: pip install -r requirements-lock.txt ."
        )


# --------------------------------------------------------------------------- scipy
def _dok_update(self, data):
    """Bulk-assign ``{(row, col): value}`` like scipy < 1.13's ``dok_matrix._update``."""
    store = getattr(self, "_dict", None)
    if store is not None:  # scipy >= 1.13 keeps the entries in a plain dict
        store.update(data)
    else:
        for key, value in data.items():
            self[key] = value


def install_scipy_dok_update(dok_class=None):
    """Give ``scipy.sparse.dok_matrix`` its ``_update`` back where scipy removed it.

    Returns True when the method had to be added.
    """
    if dok_class is None:
        import scipy.sparse

        dok_class = scipy.sparse.dok_matrix
    if hasattr(dok_class, "_update"):
        return False
    dok_class._update = _dok_update
    return True


def silence_pandas_inplace_warning():
    """Hide pandas 2.x's FutureWarning about RecBole's ``fillna(inplace=True)``.

    The call works on pandas < 3 (which the plugin requires); pandas 3 turns it into a silent
    no-op, which is why pandas is pinned below 3.  The warning is noise for users.
    """
    warnings.filterwarnings("ignore", message="(?s).*inplace method will never work",
                            category=FutureWarning)


def patch_method(cls, function):
    """Replace ``cls.<function.__name__>`` by ``function``, which reaches the replaced method as
    ``function.original``; applying the same patch again does nothing."""
    current = getattr(cls, function.__name__)
    if getattr(current, "_recbole_derrd", False):
        return
    function.original = current
    function._recbole_derrd = True
    setattr(cls, function.__name__, function)


def _ncl_run_kmeans(self, x):
    """NCL's prototype k-means: faiss clustering of ``x`` [n, d] into ``self.k`` clusters,
    on the GPUs faiss sees (as RecBole's asks) or else on the CPU; returns the normalised
    centroids [k, d] and each row's cluster [n] on the model's device."""
    import faiss
    import torch

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    kmeans = faiss.Kmeans(d=self.latent_dim, k=self.k, gpu=gpus > 0)
    kmeans.train(x)
    _, nearest = kmeans.index.search(x, 1)
    centroids = torch.nn.functional.normalize(torch.as_tensor(kmeans.centroids, device=self.device), p=2, dim=1)
    return centroids, torch.as_tensor(nearest, dtype=torch.long, device=self.device).reshape(-1)


def install_ncl_cpu_kmeans():
    """Let NCL (a general recommender the plugin distils) cluster without a GPU."""
    from recbole.model.general_recommender.ncl import NCL

    _ncl_run_kmeans.__name__ = "run_kmeans"
    patch_method(NCL, _ncl_run_kmeans)


def import_sequential_models():
    """Import ``recbole.model.sequential_recommender`` with autograd's anomaly mode left as it was
    (SINE's module switches it on at import).  Returns False when it was imported before (then
    the mode is left alone: it may be the user's own choice)."""
    if "recbole.model.sequential_recommender" in sys.modules:
        return False
    import torch

    enabled, check_nan = torch.is_anomaly_enabled(), torch.is_anomaly_check_nan_enabled()
    import recbole.model.sequential_recommender  # noqa: F401

    torch.autograd.set_detect_anomaly(enabled, check_nan)
    return True


def _colorama_init_once(*arguments, **keywords):
    """``colorama.init`` unless ``sys.stdout`` is already one of its wrappers."""
    import colorama
    from colorama.ansitowin32 import StreamWrapper

    if isinstance(sys.stdout, StreamWrapper):
        return None
    return colorama.init(*arguments, **keywords)


def install_colorama_init_once():
    import recbole.utils.logger

    recbole.utils.logger.init = _colorama_init_once


def apply():
    """Check the stack and install the runtime work-arounds (idempotent)."""
    check_stack()
    import_sequential_models()
    install_colorama_init_once()
    install_scipy_dok_update()
    install_ncl_cpu_kmeans()
    silence_pandas_inplace_warning()
    from recbole_derrd import distributed

    distributed.install_cpu_distributed()
    distributed.install_race_free_ensure_dir()
