"""Writing checkpoint files so that a crash never leaves a half-written file behind."""

import os
import tempfile

import torch


def atomic_save(obj, path, **kwargs):
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(handle, "wb") as stream:
            torch.save(obj, stream, **kwargs)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
