"""What identifies a comparison cell's run, so that a changed setting never mixes into a cell.

A cell (one method, one seed) is skipped once finished and resumed from its last checkpoint when
interrupted.  Both are right only if the cell would be run with the same settings now: a cell
finished under other loss weights, or a half-trained cell resumed under another ``de_rows``,
would put a result in the table that no single configuration produced.  Each cell therefore
records the settings that decide its result (:func:`describe`): the stock yaml keys of its
backbone(s), RecBole's training and dataset keys, the plugin keys of its method, and for a
distilled method the teacher's resolved settings (the ``t_`` overrides applied).  Paths and
output switches are left out (:data:`BOOKKEEPING_KEYS`): moving the data or the teacher cache
changes no result.  A given ``teacher_checkpoint`` is identified by its content instead of its
path (:data:`CHECKPOINT_DIGEST`): another teacher file in the same folder is another teacher,
whatever the ``t_`` keys say.  :func:`differences` names what changed, for the refusal.
"""

import hashlib
import os

from recbole_derrd.config import plugin_defaults, stock_model_yaml, teacher_config
from recbole_derrd.teacher import changed_keys, plain_json, run_settings

#: where things are read or written, and what is printed: no effect on a cell's result
BOOKKEEPING_KEYS = ("checkpoint_dir", "teacher_cache_dir", "teacher_checkpoint", "resume", "data_path",
                    "show_progress", "state")
#: the keys an explicit continuation (``continue_capped``) changes on purpose
EXTENSION_KEYS = ("epochs", "t_epochs")
#: the file, in a cell's checkpoint folder, holding the settings its checkpoints were trained with
SETTINGS_FILE = "cell-settings.json"
#: plugin keys added after cells began recording their settings, with the value at which a run is
#: what it was before the key existed: described only when set otherwise, so that cells recorded
#: earlier stay reusable under the new key's default
ADDED_KEYS = {"ir_rows": "batch", "ir_max_rows": 0, "rrd_max_rows": 0, "de_every": 1, "htd_rows": "batch"}
#: the teacher description's entry for the content of a given ``teacher_checkpoint``; cells
#: recorded before it existed lack it and are compared without it
CHECKPOINT_DIGEST = "checkpoint_sha256"
_digests = {}


def _backbone_settings(config, extra_keys=()):
    """The teacher cache's settings of a backbone run (plus ``extra_keys``), paths left out."""
    settings = run_settings(config, extra_keys)
    return {key: value for key, value in settings.items() if key not in BOOKKEEPING_KEYS}


def teacher_description(config):
    """The resolved settings of the teacher of a plugin ``config`` (the ``t_`` keys applied),
    and the content digest of its ``teacher_checkpoint`` when one is given."""
    tconfig = teacher_config(config)
    description = {"model": tconfig["model"], "settings": _backbone_settings(tconfig)}
    path = config["teacher_checkpoint"]
    if path and os.path.isfile(path):  # a missing file is the teacher loader's error to report
        description[CHECKPOINT_DIGEST] = checkpoint_digest(path)
    return plain_json(description)


def checkpoint_digest(path):
    """sha256 of a file's bytes, remembered per (path, size, mtime): a comparison describes its
    cells several times and a teacher file can be hundreds of MiB."""
    stat = os.stat(path)
    key = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def describe_teacher_cell(method, holder_config):
    """The Teacher cell's settings: the resolved settings of the teacher it tests."""
    return {"method": method, "teacher": teacher_description(holder_config)}


def describe(method, config, plugin_class=None):
    """JSON-able settings of one cell: ``config`` is the Config the cell trains with (the
    student's own for the student-alone and baseline cells), ``plugin_class`` the registered
    model class for a distilled method."""
    if plugin_class is None:
        return plain_json({"method": method, "model": config["model"], "settings": _backbone_settings(config)})
    keys = set(plugin_defaults(plugin_class)) | set(stock_model_yaml(config["student_model"]))
    settings = _backbone_settings(config, keys)
    for key, neutral in ADDED_KEYS.items():
        if key in settings and settings[key] == neutral:
            del settings[key]
    return plain_json({"method": method, "model": config["model"], "settings": settings,
                       "teacher": teacher_description(config)})


def differences(recorded, current, ignore=()):
    """['key: recorded X, now Y', ...] between two descriptions (nested keys dotted); a teacher
    checkpoint's digest counts only when the recorded cell has one (older cells do not)."""
    recorded_teacher = recorded.get("teacher")
    if isinstance(recorded_teacher, dict) and CHECKPOINT_DIGEST not in recorded_teacher:
        current = dict(current)
        if isinstance(current.get("teacher"), dict):
            current["teacher"] = {k: v for k, v in current["teacher"].items() if k != CHECKPOINT_DIGEST}
    return ["%s: recorded %r, now %r" % change for change in changed_keys(recorded, current, ignore)]
