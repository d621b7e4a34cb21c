"""Benchmark 5: DE-RRD epoch time over the Gumbel-softmax temperature schedule.

The selection weights sharpen as tau is annealed.  Evaluated exactly (``de_weight_threshold:
0``), a softmax at small tau yields denormal floats (and exact zeros) that the dense path
multiplies through every expert; on many CPUs each denormal operation is far slower, which is
how a straightforward implementation slowed from ~22 s to 157 s per epoch on CiteULike.  The
plugin drops weights below ``de_weight_threshold`` (1e-6), which removes those denormals at
their source and lets the sparse path evaluate only experts that carry weight.  This script
times a DE-RRD epoch on CiteULike (BPR 200 -> BPR 20) at tau = 1, 0.3, 0.1, 0.01 and 1e-4,
with the plugin's defaults and as a straightforward implementation would run it (every weight
kept, every expert evaluated densely), and prints the share of (row, expert) weights that
remain and of denormal weights, so a regression (a slow-down at small tau) shows side by side.

    python benchmarks/tau_sweep.py --epochs 2
"""

import argparse
import sys

import torch

from _common import add_common_arguments, environment_line, record, record_allowed, require_citeulike
from train_overhead import prepared, time_epochs

TAUS = (1.0, 0.3, 0.1, 1e-2, 1e-4)


def weight_stats(model, train, tau):
    """(share of (row, expert) weights that are non-zero, share that are denormal) on 5 batches."""
    nonzero = denormal = total = 0
    tiny = torch.finfo(torch.float32).tiny
    with torch.no_grad():
        for i, batch in enumerate(train):
            if i == 5:
                break
            users = torch.unique(batch["user_id"])
            weights = model.user_experts.selection_weights(model.teacher_adapter.user_repr(users), tau)
            nonzero += int(torch.count_nonzero(weights))
            denormal += int(((weights > 0) & (weights < tiny)).sum())
            total += weights.numel()
    return nonzero / total, denormal / total


def main(argv=None):
    parser = argparse.ArgumentParser(description="DE-RRD epoch time over the tau schedule")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=1024)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    require_citeulike(args.data_path)
    sys.argv = sys.argv[:1]
    import recbole_derrd  # noqa: F401
    from recbole_derrd.distillation import experts as experts_module

    default_fraction = experts_module.SPARSE_MAX_ACTIVE_FRACTION

    torch.set_num_threads(args.threads)
    allowed = record_allowed(args)
    env = environment_line("python benchmarks/tau_sweep.py --epochs %d" % args.epochs)
    lines = [env, "", "| tau | weights kept | denormal weights (exact) | epoch (s), plugin defaults "
             "| epoch (s), every weight, always dense |", "| --- | --- | --- | --- | --- |"]
    student, train, _, _ = prepared("BPR", args.data_path, args.batch_size, None)
    student_time, _ = time_epochs(student, train, args.epochs)
    for tau in TAUS:
        times = []
        for threshold in (1e-6, 0.0):
            model, train, hook, _ = prepared("DERRD", args.data_path, args.batch_size, tau)
            for experts in (model.user_experts, model.item_experts):
                experts.weight_threshold = threshold
            if threshold == 0.0:
                _, denormal = weight_stats(model, train, tau)
                experts_module.SPARSE_MAX_ACTIVE_FRACTION = -1.0  # never sparse
            else:
                kept, _ = weight_stats(model, train, tau)
            try:
                times.append(time_epochs(model, train, args.epochs, hook)[0])
            finally:
                experts_module.SPARSE_MAX_ACTIVE_FRACTION = default_fraction
            print("tau %g threshold %g: %.2f s/epoch" % (tau, threshold, times[-1]), flush=True)
        lines.append("| %g | %.1f%% | %.2f%% | %.2f (%.1fx student) | %.2f (%.1fx student) |" % (
            tau, 100 * kept, 100 * denormal, times[0], times[0] / student_time,
            times[1], times[1] / student_time))
    lines += ["", "Student alone (BPR-20): %.2f s/epoch. Weights: user-side selection on 5 batches "
              "(untrained selection network, so the choice is as spread as it gets)." % student_time]
    record("tau_sweep.py", lines, enabled=allowed)


if __name__ == "__main__":
    main()
