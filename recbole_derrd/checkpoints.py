"""Checkpoint files: written atomically, read safely, never steering the run that reads them.

* :func:`atomic_save` writes to a temporary file and renames it, so a crash never leaves a
  half-written checkpoint behind.
* :func:`load_checkpoint` reads a RecBole-style checkpoint through
  :mod:`recbole_derrd.safe_unpickle` (a crafted file cannot run code), and resets the loaded
  Config's device, GPU and distributed keys to a single process on the loading device: values
  read from a file never choose devices, processes or network peers of the current run.
"""

import os
import warnings

import torch

from recbole_derrd.atomic import atomic_write


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, truncated, corrupt, refused or not what it should be."""


TRUST_ENV = "RECBOLE_DERRD_TRUST_CHECKPOINTS"
#: Config keys that choose devices, processes or network peers; a loaded Config never keeps
#: the file's values (see :func:`neutralize_runtime_keys`).
DISTRIBUTED_KEYS = ("local_rank", "world_size", "nproc", "offset", "ip", "port")


def atomic_save(obj, path, **kwargs):
    """``torch.save`` through :func:`recbole_derrd.atomic.atomic_write` (never half-written)."""
    return atomic_write(path, lambda stream: torch.save(obj, stream, **kwargs))


def _device(map_location):
    if isinstance(map_location, torch.device):
        return map_location
    if isinstance(map_location, str):
        return torch.device(map_location)
    return torch.device("cpu")


def neutralize_runtime_keys(config, device):
    """Make a loaded Config describe one process on ``device`` (the loader's), whatever the file
    said: ``device``, ``gpu_id``, ``use_gpu`` and the distributed keys are replaced."""
    final = config.final_config_dict
    final["device"] = device
    final["use_gpu"] = device.type == "cuda"
    final["gpu_id"] = "" if device.type != "cuda" else str(device.index or 0)
    for key in DISTRIBUTED_KEYS:
        final.pop(key, None)
    final["local_rank"] = 0
    final["single_spec"] = True
    return config


def _trusted(trusted):
    if trusted is None:
        return os.environ.get(TRUST_ENV, "") not in ("", "0", "false", "False")
    return trusted


def load_checkpoint(path, map_location="cpu", trusted=None):
    """Load a RecBole-style checkpoint (a pickled dict holding the Config) on any torch.

    RecBole's checkpoints cannot be read with torch's ``weights_only=True`` (the default since
    torch 2.6) because they pickle the Config.  They are read with
    :mod:`recbole_derrd.safe_unpickle`, which rebuilds only what RecBole checkpoints contain,
    so a crafted file cannot run code.  ``trusted=True`` (or the environment variable
    ``RECBOLE_DERRD_TRUST_CHECKPOINTS=1``) allows full unpickling, with a warning, for trusted
    files holding other objects.
    """
    from recbole.config import Config

    from recbole_derrd import safe_unpickle

    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError("checkpoint %s is a directory, not a checkpoint file" % path)
    if not os.path.isfile(path):
        raise CheckpointError("checkpoint file not found: %s" % path)
    trusted = _trusted(trusted)
    if trusted:
        warnings.warn("loading %s with full unpickling: only do this for files you trust" % path,
                      stacklevel=2)
    try:
        if trusted:
            checkpoint = torch.load(path, map_location=map_location, weights_only=False)
        else:
            checkpoint = torch.load(path, map_location=map_location, weights_only=False,
                                    pickle_module=safe_unpickle)
    except safe_unpickle.UnsafeCheckpointError as exc:
        raise CheckpointError("refusing checkpoint %s: %s (set %s=1 only for files you trust)"
                              % (path, exc, TRUST_ENV)) from exc
    except Exception as exc:  # truncated zip, wrong format, ...
        raise CheckpointError(
            "cannot read checkpoint %s (truncated or corrupt?): %s: %s"
            % (path, type(exc).__name__, exc)
        ) from exc
    if isinstance(checkpoint, dict):
        for value in checkpoint.values():
            if type(value) is Config:
                if not isinstance(getattr(value, "final_config_dict", None), dict):
                    raise CheckpointError("checkpoint %s holds a Config without settings" % path)
                neutralize_runtime_keys(value, _device(map_location))
    return checkpoint
