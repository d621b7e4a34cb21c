"""RecBole's Trainer with safe checkpoints and resumable runs (for any RecBole trainer).

* :class:`SafeCheckpointMixin` replaces the two places RecBole's Trainer reads a checkpoint
  (``evaluate(load_best_model=True)`` and ``resume_checkpoint``) with
  :func:`recbole_derrd.checkpoints.load_checkpoint`, writes every checkpoint atomically, and keeps a
  per-epoch "last" checkpoint (``<best file>-last.pth``) holding everything needed to resume
  bit-for-bit: model, optimizer, epoch, early-stopping state, best result, the path of the best
  checkpoint and every random state (python, numpy, torch, the training loader's generator).
  ``resume: <last checkpoint>`` (or ``--resume=...`` on the command line) continues a run;
  the file is checked (model, tensors, best checkpoint) before anything trains, and a run that
  had already ended (epoch cap or early stopping) trains nothing and keeps its best checkpoint,
  where RecBole's ``fit`` would save the last-epoch weights as the best.

The distilled models' trainer builds on it in :mod:`recbole_derrd.distillation_trainer`.
"""

import copy
import os
import random
import time

import numpy as np
import torch
from recbole.trainer import Trainer
from recbole.utils import get_trainer, set_color

from recbole_derrd.checkpoints import CheckpointError, atomic_save, load_checkpoint
from recbole_derrd.distributed import broadcast_numpy_state, is_main_process

LAST_SUFFIX = "-last.pth"


def last_checkpoint_path(saved_model_file):
    stem = saved_model_file[:-4] if saved_model_file.endswith(".pth") else saved_model_file
    return stem + LAST_SUFFIX


def best_checkpoint_path(last_file):
    """The best checkpoint beside a "last" one (the inverse of :func:`last_checkpoint_path`).

    Derived from the file's own name, never read from its content: a file must not choose
    where the resumed run writes."""
    if not last_file.endswith(LAST_SUFFIX):
        raise CheckpointError("resume checkpoint %s is a 'last' checkpoint but not named <run>%s"
                              % (last_file, LAST_SUFFIX))
    stem = last_file[:-len(LAST_SUFFIX)]
    return stem if stem.endswith(".training") else stem + ".pth"


def random_states(train_data=None):
    states = {"python": random.getstate(), "numpy": np.random.get_state(),
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()  # dropout and sampling on the GPU
    if train_data is not None and getattr(train_data, "generator", None) is not None:
        states["train_loader"] = train_data.generator.get_state()
    return states


def restore_random_states(states, train_data=None):
    """Restore what :func:`random_states` saved.  The checkpoint may have been loaded onto the GPU
    (RecBole maps it to the run's device), while torch takes RNG states as CPU byte tensors only."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"].cpu())
    cuda_states = states.get("cuda")
    if cuda_states is not None and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([state.cpu() for state in cuda_states])
    if train_data is not None and "train_loader" in states:
        train_data.generator.set_state(states["train_loader"].cpu())


class SafeCheckpointMixin:
    """Checkpoint handling for any RecBole ``Trainer``: safe loading, atomic saving, resuming.

    Reads go through :func:`recbole_derrd.checkpoints.load_checkpoint` instead of a bare
    ``torch.load``; writes are atomic; after every evaluation a "last" checkpoint is written and
    ``config['resume']`` continues from one (see the module docstring).  Checkpoint names carry
    a random token after RecBole's one-second time stamp, so two runs started in the same
    second in one ``checkpoint_dir`` never overwrite each other's files.
    """

    def __init__(self, config, model):
        valid_negatives(config)  # a bad value fails before anything trains
        super().__init__(config, model)
        self.saved_model_file = unique_checkpoint_name(self.saved_model_file)
        self._resumed = False
        #: True when the epoch cap ended a run still improving on validation (set by fit).
        self.cap_bound = False
        #: wall seconds of one-off work before the first epoch that belongs to the method (the
        #: distillation terms' setup; not the teacher's training), counted in the clock below.
        self.setup_seconds = 0.0
        #: wall seconds from the start of training (setup included) to the end of the evaluation
        #: that found the best validation score, and to the last evaluation; a resumed run
        #: continues the clock of the run it resumes (time to quality, issue 17).
        self.seconds_to_best = None
        self.fit_seconds = None
        #: wall seconds spent in training epochs (evaluations excluded) and how many epochs: the
        #: per-epoch training cost the comparison tables report; a resumed run keeps counting.
        self.train_epoch_seconds = 0.0
        self.epochs_trained = 0
        #: [epoch, validation score, seconds on the clock above] per evaluation: the validation
        #: curve, to see whether a run had flattened or was still climbing; kept across a resume.
        self.valid_curve = []
        #: the validation loader of the current fit (what ``valid_negatives: fixed`` applies to)
        self._valid_source = None

    @property
    def seconds_per_epoch(self):
        """Mean wall seconds of one training epoch (its per-epoch setup included), or None."""
        return self.train_epoch_seconds / self.epochs_trained if self.epochs_trained else None

    def _train_epoch(self, train_data, epoch_idx, *args, **kwargs):
        start = time.perf_counter()
        self._begin_epoch(epoch_idx)
        result = super()._train_epoch(train_data, epoch_idx, *args, **kwargs)
        self.train_epoch_seconds += time.perf_counter() - start
        self.epochs_trained += 1
        return result

    def _begin_epoch(self, epoch_idx):
        """Work due before an epoch's batches (timed with the epoch); none for stock models."""

    def _load_into_model(self, checkpoint_file, checkpoint=None):
        if checkpoint is None:
            checkpoint = load_checkpoint(checkpoint_file, map_location=self.device)
        load_model_state(self.model, checkpoint, checkpoint_file)
        return checkpoint

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data and load_best_model:
            checkpoint_file = model_file or self.saved_model_file
            self._load_into_model(checkpoint_file)
            self.logger.info("Loading model structure and parameters from {}".format(checkpoint_file))
        fixed = eval_data is not None and eval_data is self._valid_source \
            and valid_negatives(self.config) == "fixed"
        if eval_data and not self.config["single_spec"]:
            return self._evaluate_every_user_on_every_rank(eval_data, show_progress, fixed)
        if fixed:
            eval_data = self._fixed_candidates(eval_data)
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)

    def _fixed_candidates(self, loader):
        """``valid_negatives: fixed``: the loader's batches drawn once, then reused."""
        cache = self.__dict__.setdefault("_fixed_loaders", {})
        if id(loader) not in cache:
            cache[id(loader)] = (loader, FixedCandidates.of(loader, self.config["seed"]))
        return cache[id(loader)][1]

    def _evaluate_every_user_on_every_rank(self, eval_data, show_progress, fixed=False):
        """Under DDP, RecBole splits the users over the ranks (its DistributedSampler pads the
        shares by repeating users), weights each rank's metrics by its number of *batches*, and
        draws sampled negatives from each rank's own RNG, so the metrics change with the number
        of ranks.  Here every rank evaluates every user, with rank 0's numpy state: the result
        is the single-process one, identical on every rank (so early stopping agrees too).
        Rank 0's numpy stream advances as in one process; the other ranks keep their own."""
        loader = self._undistributed_loader(eval_data)
        if fixed:  # every rank draws the same candidates from the same seeded stream
            loader = self._fixed_candidates(loader)
        own_state = np.random.get_state()
        np.random.set_state(broadcast_numpy_state(own_state))
        self._whole_pass = True
        try:
            return super().evaluate(loader, load_best_model=False, show_progress=show_progress)
        finally:
            self._whole_pass = False
            if not is_main_process():
                np.random.set_state(own_state)

    def _undistributed_loader(self, eval_data):
        cache = self.__dict__.setdefault("_undistributed_loaders", {})
        if id(eval_data) not in cache:
            config = copy.copy(eval_data.config)
            config.final_config_dict = dict(config.final_config_dict, single_spec=True)
            cache[id(eval_data)] = (eval_data, type(eval_data)(
                config, eval_data._dataset, eval_data._sampler, shuffle=False))
        return cache[id(eval_data)][1]

    def _map_reduce(self, result, num_sample):
        if getattr(self, "_whole_pass", False):
            return result  # every rank evaluated every user: nothing to combine
        return super()._map_reduce(result, num_sample)

    def _writes_checkpoints(self):
        """Only rank 0 writes checkpoints (RecBole's rule under DDP)."""
        return self.config["single_spec"] or self.config["local_rank"] == 0

    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's checkpoint, written to a temporary file and renamed (never half-written)."""
        if not self._writes_checkpoints():
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        atomic_save(self._checkpoint_state(epoch), saved_model_file, pickle_protocol=4)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")

    def _checkpoint_state(self, epoch):
        return {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
        }

    def _save_last_checkpoint(self, epoch, train_data):
        """Everything needed to continue after ``epoch`` exactly as an uninterrupted run would."""
        if not self._writes_checkpoints():
            return
        state = self._checkpoint_state(epoch)
        state.update({"last": True, "best_valid_result": self.best_valid_result,
                      "best_model_file": self.saved_model_file,
                      "random_states": random_states(train_data),
                      "fit_seconds": self.fit_seconds, "seconds_to_best": self.seconds_to_best,
                      "train_epoch_seconds": self.train_epoch_seconds, "epochs_trained": self.epochs_trained,
                      "valid_curve": self.valid_curve})
        atomic_save(state, last_checkpoint_path(self.saved_model_file), pickle_protocol=4)

    def read_resume_checkpoint(self, resume_file):
        """Load and check a checkpoint to resume from, before anything is trained.

        Raises :class:`CheckpointError` naming the file when it is missing, a directory, refused,
        saved by another model, without optimizer state, or when the best checkpoint a "last"
        checkpoint points to is gone.
        """
        resume_file = str(resume_file)
        checkpoint = load_checkpoint(resume_file, map_location=self.device)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "config" not in checkpoint:
            raise CheckpointError("resume checkpoint %s is not a RecBole checkpoint" % resume_file)
        saved_model = checkpoint["config"]["model"]
        if str(saved_model).lower() != self.config["model"].lower():
            raise CheckpointError("resume checkpoint %s was saved by model %s; this run is %s"
                                  % (resume_file, saved_model, self.config["model"]))
        if not checkpoint.get("optimizer"):
            raise CheckpointError("%s has no optimizer state: it cannot be resumed" % resume_file)
        check_model_state(self.model, checkpoint, resume_file)
        if checkpoint.get("last"):
            checkpoint["best_model_file"] = best_checkpoint_path(resume_file)
            if not os.path.isfile(checkpoint["best_model_file"]):
                raise CheckpointError(
                    "resume checkpoint %s points to its best checkpoint %s, which is missing: the "
                    "run's best model cannot be recovered" % (resume_file, checkpoint["best_model_file"]))
        return checkpoint

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None, resume_checkpoint=None):
        resume = self.config["resume"]
        self._valid_source = valid_data
        clock_start = time.perf_counter() - self.setup_seconds
        if resume:
            self.resume_checkpoint(resume, train_data=train_data, checkpoint=resume_checkpoint)
            clock_start = time.perf_counter() - (self.fit_seconds or 0.0)
        if self._resumed and self._finished():
            # RecBole's fit would save the current (last-epoch) weights as the *best* model here.
            self.logger.info("Checkpoint %s ended its run (epoch cap or early stopping): nothing "
                             "to train; the best model stays %s" % (resume, self.saved_model_file))
            self.last_evaluated_epoch = self.start_epoch - 1
            self._report_binding_cap(valid_data)
            return self.best_valid_score, self.best_valid_result

        def after_evaluation(epoch_idx, valid_score):
            self.last_evaluated_epoch = epoch_idx
            self.fit_seconds = time.perf_counter() - clock_start
            if self.cur_step == 0:
                self.best_epoch = epoch_idx
                self.seconds_to_best = self.fit_seconds
            self.valid_curve.append([int(epoch_idx), float(valid_score), round(self.fit_seconds, 3)])
            if saved:
                self._save_last_checkpoint(epoch_idx, train_data)
            if callback_fn:
                callback_fn(epoch_idx, valid_score)

        result = super().fit(train_data, valid_data, verbose=verbose, saved=saved,
                             show_progress=show_progress, callback_fn=after_evaluation)
        self._report_binding_cap(valid_data)
        return result

    def _report_binding_cap(self, valid_data):
        """Say so when the epoch cap, not early stopping, ended a run that was still improving
        on validation (its best evaluation within the last ``stopping_step`` ones).  A cap that
        allows a single evaluation (a closed-form model's one epoch) shows no trend: never bound."""
        self.cap_bound = bool(valid_data) and 0 < self.eval_step < self.epochs \
            and self.cur_step <= self.stopping_step and getattr(self, "last_evaluated_epoch", -1) >= 0
        if self.cap_bound:
            self.logger.warning(
                "%s ended at its epoch cap (epochs=%d) while still improving on validation (best "
                "epoch %s, last evaluated %d): raise `epochs`, or resume from its -last checkpoint "
                "with a larger cap" % (self.config["model"], self.epochs, getattr(self, "best_epoch", "?"),
                                       self.last_evaluated_epoch))

    def _finished(self):
        """A resumed run has nothing left: the epoch cap is reached or early stopping fired."""
        return self.start_epoch >= self.epochs or self.cur_step > self.stopping_step

    def resume_checkpoint(self, resume_file, train_data=None, checkpoint=None):
        """RecBole's resume; a "last" checkpoint also restores the best file and random states."""
        resume_file = str(resume_file)
        if checkpoint is None:
            checkpoint = self.read_resume_checkpoint(resume_file)
        self.saved_model_file = resume_file
        self._load_into_model(resume_file, checkpoint)
        self.start_epoch = checkpoint["epoch"] + 1
        self.cur_step = checkpoint["cur_step"]
        self.best_valid_score = checkpoint["best_valid_score"]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        if checkpoint.get("last"):
            self.saved_model_file = checkpoint["best_model_file"]
            self.best_valid_result = checkpoint["best_valid_result"]
            restore_random_states(checkpoint["random_states"], train_data)
            self.fit_seconds = _seconds(checkpoint.get("fit_seconds"))
            self.seconds_to_best = _seconds(checkpoint.get("seconds_to_best"))
            self.train_epoch_seconds = _seconds(checkpoint.get("train_epoch_seconds")) or 0.0
            self.epochs_trained = _count(checkpoint.get("epochs_trained"))
            self.valid_curve = _curve(checkpoint.get("valid_curve"))
        self._resumed = True
        self.logger.info("Checkpoint loaded. Resume training from epoch {}".format(self.start_epoch))


#: ``valid_negatives``: RecBole redraws a sampled validation's negatives at every evaluation;
#: ``fixed`` draws them once per run (see :class:`FixedCandidates`).
VALID_NEGATIVES = ("redraw", "fixed")


def valid_negatives(config):
    """The run's ``valid_negatives`` (not set: ``redraw``, RecBole's behaviour)."""
    value = config["valid_negatives"] if "valid_negatives" in config else None
    value = "redraw" if value is None else value
    if value not in VALID_NEGATIVES:
        raise ValueError("valid_negatives=%r must be one of %s" % (value, VALID_NEGATIVES))
    return value


class FixedCandidates:
    """A sampled-evaluation loader's batches, drawn once and replayed at every pass.

    RecBole draws a sampled validation's negatives (``uni499``, ...) again at every evaluation,
    from the global numpy stream, one sampler call per user: on CiteULike that costs more than
    the scoring itself; and every epoch is judged on other candidates.  Here the candidates are drawn once per run,
    from a stream seeded by ``seed`` alone, with the global numpy state saved and restored around
    the draw: validation then draws nothing from the global stream, so the training negatives
    do not depend on how often the run evaluates, and a resumed run validates on the same
    candidates.  Loaders without sampled negatives (full ranking) are returned unchanged.
    """

    #: offset of the candidates' seed from the run's seed (any fixed number works)
    SEED_OFFSET = 7919

    def __init__(self, loader, batches):
        self._dataset = loader._dataset
        self.loader = loader
        self.batches = batches

    @classmethod
    def of(cls, loader, seed):
        args = getattr(loader, "neg_sample_args", None) or {}
        if args.get("distribution", "none") == "none" or args.get("sample_num", "none") == "none":
            return loader
        state = np.random.get_state()
        try:
            np.random.seed((int(seed) + cls.SEED_OFFSET) % (2 ** 32))
            batches = list(loader)
        finally:
            np.random.set_state(state)
        return cls(loader, batches)

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def _seconds(value):
    """A clock reading from a checkpoint: a finite float >= 0, else None (older files have none)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf"):
        return float(value)
    return None


def _count(value):
    """A count from a checkpoint: an int >= 0, else 0 (older files have none)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _curve(value):
    """A validation curve from a checkpoint: [[epoch, score, seconds], ...] of plain numbers,
    else [] (older files have none; anything else is not trusted)."""
    if not isinstance(value, list):
        return []
    curve = []
    for point in value:
        if not (isinstance(point, list) and len(point) == 3
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)
                and isinstance(point[0], int) and point[0] >= 0):
            return []
        curve.append([point[0], float(point[1]), float(point[2])])
    return curve


def unique_checkpoint_name(saved_model_file):
    """``<Model>-<time>.pth`` -> ``<Model>-<time>-<8 hex>.pth``; under DDP every rank gets rank
    0's token (rank 0 writes, the others read the same file)."""
    token = torch.tensor(int.from_bytes(os.urandom(4), "little"), dtype=torch.int64)
    import torch.distributed as dist

    if dist.is_initialized():
        dist.broadcast(token, src=0)
    stem = saved_model_file[:-4] if saved_model_file.endswith(".pth") else saved_model_file
    return "%s-%08x.pth" % (stem, int(token))


def check_model_state(model, checkpoint, source):
    """Raise :class:`CheckpointError` naming ``source`` unless its tensors fit ``model``."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError("checkpoint %s has no state_dict" % source)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(k for k in set(expected) & set(state)
                    if not isinstance(state[k], torch.Tensor) or state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("other shapes", shapes)):
            if keys:
                parts.append("%s: %s%s" % (label, ", ".join(keys[:5]), " ..." if len(keys) > 5 else ""))
        raise CheckpointError("checkpoint %s does not fit model %s (%s)"
                              % (source, type(model).__name__, "; ".join(parts)))
    other = checkpoint.get("other_parameter")
    allowed = set(getattr(model, "other_parameter_name", None) or ())
    if other is not None and (not isinstance(other, dict) or not set(other) <= allowed):
        raise CheckpointError("checkpoint %s sets attributes %s that model %s does not keep"
                              % (source, sorted(set(other) - allowed) if isinstance(other, dict) else other,
                                 type(model).__name__))


def load_model_state(model, checkpoint, source):
    """Load a checkpoint's tensors and other parameters into ``model``, checked first."""
    check_model_state(model, checkpoint, source)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))


_SAFE_CLASSES = {}


def safe_trainer(config, model):
    """RecBole's trainer for ``config``'s model type and model, with safe checkpoints."""
    return safe_trainer_class(get_trainer(config["MODEL_TYPE"], config["model"]))(config, model)


def safe_trainer_class(trainer_class):
    """``trainer_class`` with :class:`SafeCheckpointMixin` applied.

    Trainers outside RecBole's ``Trainer`` family (the decision-tree trainers, which save with
    their libraries' own formats) are returned unchanged.
    """
    if issubclass(trainer_class, SafeCheckpointMixin) or not issubclass(trainer_class, Trainer):
        return trainer_class
    if trainer_class not in _SAFE_CLASSES:
        _SAFE_CLASSES[trainer_class] = type(
            "Safe" + trainer_class.__name__, (SafeCheckpointMixin, trainer_class), {})
    return _SAFE_CLASSES[trainer_class]
