"""Making the frozen teacher ready: load a given checkpoint, reuse the cache, or train it.

:func:`prepare_distillation` is the one step before a distilled student trains (the trainer,
the benchmarks and the harness call it): the teacher first, then the terms' precomputation.

Cache: with no ``teacher_checkpoint``, the teacher is trained once with RecBole's own Trainer on
the student's dataset, split and seed, and saved to
``<teacher_cache_dir>/<teacher_model>-<dataset>-<key>.pth`` (``teacher_cache_dir`` defaults to
``<checkpoint_dir>/teachers``).  ``key`` is the SHA-256 of :func:`cache_description`: the
teacher's model and every setting that shapes its training (its stock model keys after ``t_``
overrides, the training keys in :data:`TRAINING_KEYS`, the dataset keys RecBole filters and
splits with, the seed) and a fingerprint of the data itself (user and item token maps, the
training and validation interactions).  Any change gives a new key, so a cached teacher is never
silently reused with different settings.

Concurrent runs: the check-train-write of one cache entry holds a file lock
(``<entry>.pth.lock``, via ``filelock``), so a second run that needs the same teacher waits and
then reuses it instead of training it again.  The operating system releases the lock of a
killed process, so a crashed run never blocks the next one.  A cached file that cannot be read
is moved aside (``.corrupt-<time>``, kept) and the teacher is retrained, with a warning.
"""

import contextlib
import hashlib
import json
import os
import time
from logging import getLogger

import filelock

import numpy as np

from recbole.data.utils import get_dataloader
from recbole.utils import init_seed

from recbole_derrd.backbone_support import model_size
from recbole_derrd.checkpoints import CheckpointError, atomic_save, load_checkpoint
from recbole_derrd.distributed import barrier, is_main_process
from recbole_derrd.config import stock_model_yaml
from recbole_derrd.trainer import last_checkpoint_path, load_model_state, safe_trainer, valid_negatives

CACHE_FORMAT = 1
TRAINING_KEYS = (
    "epochs", "train_batch_size", "learner", "learning_rate", "weight_decay",
    "train_neg_sample_args", "eval_step", "stopping_step", "clip_grad_norm", "valid_metric",
    "metrics", "topk", "eval_args", "seed", "reproducibility", "shuffle", "require_pow",
)
#: split settings compared when a stock RecBole checkpoint (without our metadata) is given.
SPLIT_KEYS = ("dataset", "eval_args", "benchmark_filename", "seed")


def pristine_dataset_arguments():
    """RecBole's list of dataset keys as its source defines it.

    ``recbole.utils.dataset_arguments`` is one module-level list that every ``Config`` built on
    a dataset with a yaml of its own (ml-100k, ...) extends in place, so reading it would make
    the cache key depend on which Configs this process built before.  A private copy of the
    module gives the list as written.
    """
    import importlib.util

    import recbole.utils.argument_list as source

    spec = importlib.util.spec_from_file_location("_recbole_argument_list", source.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return tuple(module.dataset_arguments)


DATASET_KEYS = pristine_dataset_arguments()


def _digest(*arrays):
    h = hashlib.sha256()
    for array in arrays:
        h.update(np.ascontiguousarray(array).tobytes())
        h.update(b"|")
    return h.hexdigest()


def _tokens_digest(tokens):
    return hashlib.sha256("\x1f".join(map(str, tokens)).encode("utf-8")).hexdigest()


def interactions_digest(dataset):
    """SHA-256 of a split's (user id, item id) pairs, in order."""
    return _digest(dataset.inter_feat[dataset.uid_field].numpy(),
                   dataset.inter_feat[dataset.iid_field].numpy())


def data_fingerprint(train_dataset, valid_dataset=None):
    """What identifies the data a teacher was trained on: sizes, token maps, the splits."""
    fingerprint = {
        "n_users": int(train_dataset.user_num),
        "n_items": int(train_dataset.item_num),
        "user_tokens": _tokens_digest(train_dataset.field2id_token[train_dataset.uid_field]),
        "item_tokens": _tokens_digest(train_dataset.field2id_token[train_dataset.iid_field]),
        "train_interactions": interactions_digest(train_dataset),
    }
    if valid_dataset is not None:
        fingerprint["valid_interactions"] = interactions_digest(valid_dataset)
    return fingerprint


def plain_json(value):
    """``value`` as JSON would give it back (tuples as lists, other objects as text): comparable
    with what a file recorded."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def run_settings(config, extra_keys=()):
    """{key: value} of what decides a backbone's training run: its stock yaml keys, RecBole's
    training and dataset keys, and ``extra_keys`` (the teacher cache key; a comparison cell's)."""
    keys = set(stock_model_yaml(config["model"])) | set(TRAINING_KEYS) | set(DATASET_KEYS) | set(extra_keys)
    return {k: config[k] for k in sorted(keys)}


def changed_keys(recorded, current, ignore=(), prefix=""):
    """[(dotted key, recorded value, current value)] where two nested dicts differ, keys in
    ``ignore`` skipped at every level."""
    found = []
    for key in sorted(set(recorded) | set(current)):
        if key in ignore:
            continue
        a, b = recorded.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found += changed_keys(a, b, ignore, prefix + key + ".")
        elif a != b:
            found.append((prefix + key, a, b))
    return found


def cache_description(tconfig, fingerprint):
    """Everything the cache key covers, as a JSON-able dict (also stored in the cache file)."""
    model = tconfig["model"]
    settings = run_settings(tconfig)
    negatives = valid_negatives(tconfig)
    if negatives != "redraw":  # only then: keys of existing caches stay valid
        settings["valid_negatives"] = negatives
    return plain_json({
        "format": CACHE_FORMAT,
        "teacher_model": model,
        "dataset": tconfig["dataset"],
        "settings": settings,
        "data": fingerprint,
    })


def cache_key(description):
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode("utf-8")).hexdigest()


def cache_path(config, tconfig, key):
    folder = config["teacher_cache_dir"] or os.path.join(config["checkpoint_dir"], "teachers")
    return os.path.join(folder, "%s-%s-%s.pth" % (tconfig["model"], tconfig["dataset"], key[:16]))


def _differences(expected, found, ignore=()):
    return ["%s: checkpoint has %r, this run has %r" % (key, b, a)
            for key, a, b in changed_keys(expected, found, ignore)]


def _load_weights(teacher, checkpoint, source):
    """The checkpoint's tensors and the other parameters the teacher declares (Pop's counts,
    the closed-form models' matrices: read as data by the safe unpickler, never code)."""
    try:
        load_model_state(teacher, checkpoint, source)
    except (CheckpointError, RuntimeError) as exc:
        raise CheckpointError(
            "teacher checkpoint %s does not fit teacher_model=%s with this run's t_ settings "
            "(sizes or dataset differ): %s" % (source, type(teacher).__name__, exc)) from exc


def verify_checkpoint(checkpoint, path, tconfig, fingerprint):
    """Raise a clear error naming every difference between a teacher checkpoint and this run."""
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError("teacher_checkpoint %s is not a RecBole checkpoint (no state_dict)" % path)
    meta = checkpoint.get("derrd_teacher")
    if meta is not None:
        expected = cache_description(tconfig, fingerprint)
        diffs = _differences({"teacher_model": expected["teacher_model"], "dataset": expected["dataset"],
                              "data": expected["data"]},
                             {"teacher_model": meta.get("teacher_model"), "dataset": meta.get("dataset"),
                              "data": meta.get("data", {})})
    else:
        saved = checkpoint.get("config")
        diffs = []
        if saved is None:
            raise CheckpointError("teacher_checkpoint %s has no config to verify against" % path)
        if saved["model"] != tconfig["model"]:
            diffs.append("model: checkpoint has %r, teacher_model is %r" % (saved["model"], tconfig["model"]))
        for key in SPLIT_KEYS:
            if plain_json(saved[key]) != plain_json(tconfig[key]):
                diffs.append("%s: checkpoint has %r, this run has %r" % (key, saved[key], tconfig[key]))
        getLogger().warning(
            "teacher_checkpoint %s is a stock RecBole checkpoint: its token maps cannot be "
            "verified, only its settings and tensor shapes" % path)
    if diffs:
        raise CheckpointError("teacher_checkpoint %s was made for other data or settings:\n  - %s"
                              % (path, "\n  - ".join(diffs)))


#: the settings a validation score depends on: the same model scored otherwise is another number
VALIDATION_KEYS = ("eval_args", "valid_metric", "metrics", "topk")


def validation_settings_changed(checkpoint, tconfig):
    """["key: checkpoint has X, this run has Y"] for the evaluation settings under which a
    plugin teacher checkpoint's best validation score was measured, where they differ from this
    run's (a teacher trained under sampled ranking, reused in a full-ranking run).  A stock
    RecBole checkpoint's ``eval_args`` were already verified equal (``SPLIT_KEYS``)."""
    meta = checkpoint.get("derrd_teacher")
    if meta is None:
        return []
    recorded = meta.get("settings") or {}
    current = plain_json({k: tconfig[k] for k in VALIDATION_KEYS})
    # eval_args.mode.test: the test pass's protocol, which a validation score does not depend on
    return _differences(current, {k: recorded.get(k) for k in VALIDATION_KEYS}, ignore=("test",))


def train_teacher(teacher, tconfig, train_data, valid_data, path, show_progress=False):
    """Train ``teacher`` with RecBole's Trainer on the student's split; return its best checkpoint.

    Resumable: the training writes ``<path>.training`` (best) and its "last" checkpoint every
    evaluation; a call that finds them (same teacher key, so same settings and data) continues
    from the last one, exactly as the uninterrupted run would have, and a last checkpoint of a
    training that had already ended trains nothing more.  A "last" checkpoint that cannot be
    used (unreadable, or its best checkpoint is gone) is moved aside and training starts over.
    The files stay until :func:`remove_training_files` (after the cache is written).

    Under DDP every rank trains it together (RecBole's distributed Trainer); rank 0 writes the
    best checkpoint and the others read it after a barrier.
    """
    logger = getLogger()
    logger.info("Training teacher %s (no cached teacher at %s)" % (tconfig["model"], path))
    init_seed(tconfig["seed"], tconfig["reproducibility"])
    loader = get_dataloader(tconfig, "train")(
        tconfig, train_data._dataset, train_data._sampler, shuffle=tconfig["shuffle"])
    teacher.requires_grad_(True).train()
    trainer = safe_trainer(tconfig, teacher)
    # RecBole validates (and saves the best checkpoint) every eval_step epochs only: a teacher
    # trained for fewer epochs (the closed-form ones train one) would end with nothing saved.
    trainer.eval_step = max(1, min(trainer.eval_step, trainer.epochs))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    trainer.saved_model_file = path + ".training"
    last = last_checkpoint_path(trainer.saved_model_file)
    if os.path.exists(last):  # an earlier run of this very teacher was interrupted: continue it
        try:
            checkpoint = trainer.read_resume_checkpoint(last)
        except CheckpointError as exc:
            _move_aside(last, "unusable", "cannot resume the teacher's training (%s)" % exc)
        else:
            logger.info("Resuming the teacher's training from %s" % last)
            trainer.resume_checkpoint(last, train_data=loader, checkpoint=checkpoint)
    trainer.fit(loader, valid_data, saved=True, show_progress=show_progress)
    barrier()
    best = load_checkpoint(trainer.saved_model_file, map_location=tconfig["device"])
    barrier()
    _load_weights(teacher, best, path + ".training")
    return best


def remove_training_files(path):
    """Drop a finished teacher training's checkpoints (``last`` first: it is what resumes).

    Only a training whose teacher is cached removes them: after an interruption (an exception,
    Ctrl-C, a killed process) they stay, and the next call resumes from the last one.
    """
    training = path + ".training"
    for leftover in (last_checkpoint_path(training), training):
        if is_main_process() and os.path.exists(leftover):
            os.remove(leftover)


def _move_aside(path, reason, why):
    """Rename an unusable file to ``<path>.<reason>-<time>`` (kept for inspection) and warn."""
    target = "%s.%s-%s" % (path, reason, time.strftime("%Y%m%d-%H%M%S"))
    if is_main_process():
        os.replace(path, target)
    getLogger().warning("%s: moved %s aside to %s" % (why, path, target))
    return target


@contextlib.contextmanager
def cache_lock(path):
    """Hold ``<path>.lock`` while one run checks, trains and writes one cache entry.

    Under DDP rank 0 holds it for the group; the other ranks wait at a barrier.
    """
    lock = filelock.FileLock(path + ".lock") if is_main_process() else None
    if lock is not None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            getLogger().warning("another run is preparing the teacher %s (lock %s held): waiting "
                                "for it" % (path, lock.lock_file))
            lock.acquire()
    barrier()
    try:
        yield
    finally:
        barrier()
        if lock is not None:
            lock.release()


def prepare_distillation(model, train_data, valid_data, show_progress=False):
    """The one step before a distilled student trains: make its teacher ready (load and verify
    ``teacher_checkpoint``, reuse the cache, or train and cache it), then let every term
    precompute what depends on the teacher.  Idempotent.  Returns the model."""
    if not model.teacher_ready:
        prepare_teacher(model, train_data, valid_data, show_progress=show_progress)
        model.teacher_ready = True
    model.prepare_terms(train_data)
    return model


def prepare_teacher(model, train_data, valid_data, show_progress=False):
    """Fill ``model.teacher`` with trained weights; leave it frozen in eval mode.

    ``model.teacher_epoch`` and ``model.teacher_valid_score`` record the epoch and validation
    score (``valid_metric``) of the loaded (best) checkpoint, None if unknown.
    With ``tune_teacher`` the teacher is the best of a search on validation
    (:mod:`recbole_derrd.teacher_tuning`).
    """
    from recbole_derrd.teacher_tuning import tune_teacher, tuning_plan

    config, tconfig, teacher = model.config, model.teacher_config, model.teacher
    logger = getLogger()
    fingerprint = data_fingerprint(train_data._dataset, valid_data._dataset if valid_data else None)
    given = config["teacher_checkpoint"]
    plan = tuning_plan(config)
    if given:
        checkpoint = load_checkpoint(given, map_location=config["device"])
        verify_checkpoint(checkpoint, given, tconfig, fingerprint)
        _load_weights(teacher, checkpoint, given)
        logger.info("Teacher loaded from teacher_checkpoint %s" % given)
    elif plan:
        checkpoint = tune_teacher(model, train_data, valid_data, fingerprint, plan, show_progress)
        tconfig, teacher = model.teacher_config, model.teacher
    else:
        checkpoint = cached_or_trained_teacher(teacher, config, tconfig, fingerprint, train_data, valid_data,
                                               show_progress)[0]
    model.teacher_epoch = checkpoint.get("epoch")
    model.teacher_valid_score = checkpoint.get("best_valid_score")
    if given and model.teacher_valid_score is not None:
        other = validation_settings_changed(checkpoint, tconfig)
        if other:
            logger.info("The teacher's best validation score (%s) was measured under other evaluation "
                        "settings (%s): it is not reported against this run's validation"
                        % (_score_text(model.teacher_valid_score), "; ".join(other)))
            model.teacher_valid_score = None
    teacher_size, student_size = model_size(teacher), model_size(model.student)
    logger.info("Teacher ready: %s, %s parameters, best validation %s %s (epoch %s); student %s, %s "
                "parameters: phi (student / teacher size) = %s" % (
                    tconfig["model"], format(teacher_size, ","), tconfig["valid_metric"],
                    _score_text(checkpoint.get("best_valid_score")), model.teacher_epoch,
                    config["student_model"], format(student_size, ","),
                    "%.3f" % (student_size / teacher_size) if teacher_size else "n/a"))
    teacher.zero_grad(set_to_none=True)  # drop gradients left over from its own training
    teacher.eval().requires_grad_(False)
    return teacher


def cached_or_trained_teacher(teacher, config, tconfig, fingerprint, train_data, valid_data, show_progress=False):
    """Load ``teacher``'s cache entry for ``tconfig``, or train it and write the entry.

    Returns (best checkpoint, cache path, "cache" or "trained").  The check-train-write holds the
    entry's lock; the training seconds of a trained teacher are stored in its entry
    (``derrd_train_seconds``) so a search table can report them when it is read back later.
    """
    logger = getLogger()
    description = cache_description(tconfig, fingerprint)
    path = cache_path(config, tconfig, cache_key(description))
    with cache_lock(path):
        checkpoint = _read_cache(path, description, teacher, config["device"])
        if checkpoint is not None:
            logger.info("Teacher loaded from cache %s" % path)
            return checkpoint, path, "cache"
        start = time.perf_counter()
        checkpoint = train_teacher(teacher, tconfig, train_data, valid_data, path, show_progress)
        checkpoint["derrd_train_seconds"] = time.perf_counter() - start
        if is_main_process():
            _write_cache(path, tconfig, checkpoint, teacher, description)
        barrier()
        remove_training_files(path)
        logger.info("Teacher saved to cache %s" % path)
    return checkpoint, path, "trained"


def _read_cache(path, description, teacher, device):
    """The cached checkpoint loaded into ``teacher``; None when there is none or it was unusable
    (moved aside with a warning: the teacher is then trained again)."""
    if not os.path.isfile(path):
        return None
    try:
        checkpoint = load_checkpoint(path, map_location=device)
        if not isinstance(checkpoint, dict) or checkpoint.get("derrd_teacher") != description:
            raise CheckpointError("cached teacher %s does not match its key" % path)
        _load_weights(teacher, checkpoint, path)
    except CheckpointError as exc:
        barrier()
        _move_aside(path, "corrupt", "cached teacher unusable (%s); it is retrained" % exc)
        return None
    return checkpoint


def _score_text(score):
    return "%.4f" % score if isinstance(score, (int, float)) else "unknown"


def _write_cache(path, tconfig, best, teacher, description):
    atomic_save({
        "config": tconfig,
        "epoch": best["epoch"],
        "cur_step": best["cur_step"],
        "best_valid_score": best["best_valid_score"],
        "state_dict": teacher.state_dict(),
        "other_parameter": teacher.other_parameter(),
        "derrd_teacher": description,
        "derrd_train_seconds": float(best.get("derrd_train_seconds") or 0.0),
    }, path, pickle_protocol=4)
    with open(path + ".json", "w", encoding="utf-8") as handle:
        json.dump(description, handle, indent=2, sort_keys=True)
