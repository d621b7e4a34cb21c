"""Writing a file so that a crash never leaves it half-written: the one atomic writer.

The content goes to a temporary file in the target's folder, is flushed to disk, then renamed
over the target (atomic on POSIX and Windows).  Checkpoints, cached teachers, exported files,
comparison cells and tables, and generated datasets all go through :func:`atomic_write`.
"""

import os
import tempfile


def atomic_write(path, write, binary=True):
    """Call ``write(stream)`` on a temporary file beside ``path``, then rename it to ``path``.

    Errors name ``path`` (not the temporary file); on any failure the temporary file is removed
    and an existing ``path`` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        handle, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=folder)
    except OSError as exc:
        raise OSError(exc.errno, "cannot write %s: %s" % (path, exc.strerror)) from exc
    try:
        with os.fdopen(handle, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as stream:
            write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def atomic_write_text(path, text):
    return atomic_write(path, lambda stream: stream.write(text), binary=False)
