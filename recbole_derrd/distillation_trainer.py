"""The trainer of the distilled models: the teacher first, then the student with the KD hooks.

:class:`DistillationTrainer` makes the teacher ready and lets the terms precompute (through
:func:`recbole_derrd.teacher.prepare_distillation`, the one public step the benchmarks and the
comparison use too), re-seeds so that the student's random stream does not depend on whether
the teacher was trained or cached, and calls the model's per-epoch hook (temperature
annealing, list resampling).  The flow is one way: trainer -> teacher -> (safe) trainer of the
teacher; the model module imports neither.
"""

import torch
from recbole.trainer import Trainer
from recbole.utils import init_seed, set_color

from recbole_derrd.numerics import flush_denormals
from recbole_derrd.teacher import prepare_distillation
from recbole_derrd.trainer import SafeCheckpointMixin


def fused_adam(optimizer):
    """The same Adam/AdamW with torch's fused kernel, else ``optimizer`` unchanged.

    Same update rule (equal up to float rounding); one kernel per step instead of a chain of
    foreach ops, which matters for DE's many expert parameters (benchmarks/RESULTS.md).
    """
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return optimizer
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not params or any(p.device.type not in ("cpu", "cuda") or not p.is_floating_point()
                         for p in params):
        return optimizer
    groups = [{key: value for key, value in group.items() if key not in ("foreach", "fused")}
              for group in optimizer.param_groups]
    defaults = {key: value for key, value in optimizer.defaults.items()
                if key not in ("foreach", "fused", "differentiable")}
    return type(optimizer)(groups, **defaults, fused=True)


class DistillationTrainer(SafeCheckpointMixin, Trainer):
    """Trainer of the plugin's models (registered as ``<Model>Trainer``)."""

    def _build_optimizer(self, **kwargs):
        optimizer = super()._build_optimizer(**kwargs)
        return fused_adam(optimizer) if self.config["fused_adam"] else optimizer

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False,
            callback_fn=None, resume_checkpoint=None):
        # A bad ``resume`` fails here, before the teacher is trained.
        if self.config["resume"] and resume_checkpoint is None:
            resume_checkpoint = self.read_resume_checkpoint(self.config["resume"])
        flush_denormals(self.config)  # this thread at least, when load_data did not run first
        prepare_distillation(self.model, train_data, valid_data, show_progress=show_progress)
        self.setup_seconds = self.model.terms_prepare_seconds or 0.0
        # The teacher may just have been trained (consuming random numbers) or loaded: restart
        # the stream so the student trains identically in both cases.
        init_seed(self.config["seed"] + self.config["local_rank"], self.config["reproducibility"])
        return super().fit(train_data, valid_data, verbose=verbose, saved=saved,
                           show_progress=show_progress, callback_fn=callback_fn,
                           resume_checkpoint=resume_checkpoint)

    def _begin_epoch(self, epoch_idx):
        self.model.start_epoch(epoch_idx)  # the terms' per-epoch tables and samples

    def _generate_train_loss_output(self, epoch_idx, s_time, e_time, losses):
        names = getattr(self.model, "loss_part_names", ())
        if not isinstance(losses, tuple) or len(names) != len(losses):
            return super()._generate_train_loss_output(epoch_idx, s_time, e_time, losses)
        places = self.config["loss_decimal_place"] or 4
        parts = ", ".join(set_color("%s loss" % name, "blue") + ": %.*f" % (places, value)
                          for name, value in zip(names, losses))
        head = (set_color("epoch %d training", "green") + " [" + set_color("time", "blue")
                + ": %.2fs, ") % (epoch_idx, e_time - s_time)
        summary = self.model.epoch_summary() if hasattr(self.model, "epoch_summary") else ""
        return head + parts + "]" + (" " + summary if summary else "")
