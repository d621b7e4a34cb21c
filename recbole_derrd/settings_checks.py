"""Run-level settings checked when a plugin model's Config is built, before anything trains.

Model-level keys (weights, sizes, K, T ...) are checked by the model that reads them; here are
the keys of the run around it: epoch counts and batch sizes (a teacher trained for 0 epochs
would be cached and distilled), output folders that must be writable (a read-only folder would
fail at the first save, after a teacher and an epoch), and keys that look like a typo of a
known key (RecBole accepts any key silently).
"""

import difflib
import os
import tempfile
import warnings

from recbole.utils.argument_list import (dataset_arguments, evaluation_arguments, general_arguments,
                                         training_arguments)

from recbole_derrd.config import TEACHER_PREFIX
from recbole_derrd.terms.base import positive_int

POSITIVE_INTEGER_KEYS = ("epochs", "train_batch_size", "eval_batch_size", "eval_step")
#: keys RecBole or the plugin read without a yaml default.
EXTRA_KNOWN_KEYS = ("resume", "benchmark_filename", "nproc", "world_size", "ip", "port", "offset",
                    "config_files", "model", "dataset", "valid_negatives")
#: run_recbole_derrd.py's own flags: RecBole's Config reads every --key=value of the command line
#: too, so they reach the config (``--seeds`` would otherwise be "did you mean 'seed'?")
RUN_SCRIPT_KEYS = ("seeds", "compare", "baselines", "out_dir", "continue_capped", "side_by_side", "export_dir",
                   "group_offset", "debug")


def check_counts(config):
    for key in POSITIVE_INTEGER_KEYS:
        positive_int(config, key)
    if not config["teacher_checkpoint"]:  # the teacher is trained: its epochs must be too
        for key in ("t_epochs", "t_train_batch_size"):
            if config[key] is not None:
                positive_int(config, key)


def _writable(folder, key):
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise PermissionError("%s=%r is not a writable folder: %s" % (key, folder, exc.strerror or exc)) from exc


def check_output_folders(config):
    _writable(config["checkpoint_dir"], "checkpoint_dir")
    if not config["teacher_checkpoint"]:
        folder = config["teacher_cache_dir"] or os.path.join(config["checkpoint_dir"], "teachers")
        _writable(folder, "teacher_cache_dir")


def suspicious_keys(given, known):
    """(key, suggestion) for each given key that is unknown but close to a known one."""
    known = set(known)
    known |= {TEACHER_PREFIX + k for k in known}
    found = []
    for key in sorted(given):
        if key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.8)
        if close:
            found.append((key, close[0]))
    return found


def warn_about_typos(config):
    known = (set(config.internal_config_dict) | set(general_arguments) | set(training_arguments)
             | set(evaluation_arguments) | set(dataset_arguments) | set(EXTRA_KNOWN_KEYS) | set(RUN_SCRIPT_KEYS))
    for key, suggestion in suspicious_keys(config.external_config_dict, known):
        warnings.warn("config key %r is not a setting of %s or RecBole and is ignored; did you mean %r?"
                      % (key, config["model"], suggestion), stacklevel=2)


def check_teacher_tuning(config):
    """``tune_teacher`` and its grid, read now rather than after the data is loaded."""
    from recbole_derrd.teacher_tuning import tuning_plan

    tuning_plan(config)


def check_run_settings(config):
    from recbole_derrd.trainer import valid_negatives

    valid_negatives(config)
    check_counts(config)
    warn_about_typos(config)
    check_output_folders(config)
    check_teacher_tuning(config)
