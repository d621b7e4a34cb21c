"""Benchmark 9: DE-RRD epoch time with and without flush-to-zero, from a trained state.

Untrained models hold no denormal floats, so the other epoch benchmarks never meet them. After
some epochs of real training they appear: expert weights and hidden units that stop receiving
gradient shrink geometrically under Adam with weight decay (and Adam's first moment decays the
same way), and their products fall below 1.2e-38, where every CPU operation takes a slow path.
This script trains DE-RRD on CiteULike (BPR 200 -> BPR 20, ``citeulike-bpr.yaml`` with
``de_rows: epoch``, IEEE arithmetic) for ``--warm_epochs`` epochs with a short tau schedule
(``--anneal_epochs``; the paper's 1000 reaches the same phase around epoch 25), counts the
denormal parameters and optimizer-state entries, then times the same next epoch from that
state with ``flush_denormal`` off and on, alternating, ``--rounds`` times each.

It runs at one torch thread: the flag belongs to each thread, and worker threads take it from
the thread that starts them, so only with one thread can the same process compare both modes.

    python benchmarks/denormals.py --teacher_checkpoint <BPR-200 CiteULike teacher .pth>
"""

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

import torch

from _common import ROOT, add_common_arguments, environment_line, record, record_allowed, require_citeulike

CONFIGS = [os.path.join(ROOT, "results", "citeulike", name) for name in ("citeulike-bpr.yaml", "de-epoch-rows.yaml")]


def denormal_counts(model, optimizer):
    """(denormal parameter entries, denormal optimizer-state entries, all parameter entries)."""
    tiny = torch.finfo(torch.float32).tiny

    def count(t):
        return int(((t != 0) & (t.abs() < tiny)).sum())

    params = list(model.parameters())
    states = [v for p in params for v in optimizer.state.get(p, {}).values() if torch.is_tensor(v) and v.dim()]
    return sum(count(p.data) for p in params), sum(count(v) for v in states), sum(p.numel() for p in params)


def main(argv=None):
    parser = argparse.ArgumentParser(description="DE-RRD epoch time with and without flush-to-zero")
    parser.add_argument("--teacher_checkpoint", required=True)
    parser.add_argument("--warm_epochs", type=int, default=14)
    parser.add_argument("--anneal_epochs", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    add_common_arguments(parser)
    parser.set_defaults(threads=1)
    args = parser.parse_args(argv)
    require_citeulike(args.data_path)
    if args.threads != 1:
        parser.error("--threads must be 1 (see the docstring)")
    if not os.path.exists(args.teacher_checkpoint):
        parser.error("--teacher_checkpoint: no such file %s" % args.teacher_checkpoint)
    sys.argv = sys.argv[:1]
    torch.set_num_threads(1)
    allowed = record_allowed(args)
    from recbole.utils import get_model, get_trainer, init_seed

    from recbole_derrd.quick_start import prepare
    from recbole_derrd.trainer import safe_trainer_class

    work = tempfile.mkdtemp(prefix="denormals-")
    os.chdir(work)
    settings = {"data_path": args.data_path, "teacher_checkpoint": os.path.abspath(args.teacher_checkpoint),
                "epochs": args.warm_epochs, "eval_step": 10 ** 6, "de_anneal_epochs": args.anneal_epochs,
                "flush_denormal": False, "show_progress": False, "state": "ERROR", "seed": 0,
                "checkpoint_dir": os.path.join(work, "saved")}
    config, _, train, valid, _ = prepare("DERRD", None, CONFIGS, settings)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model("DERRD")(config, train._dataset)
    trainer = safe_trainer_class(get_trainer(config["MODEL_TYPE"], "DERRD"))(config, model)
    start = time.perf_counter()
    trainer.fit(train, valid, saved=False, show_progress=False)
    warm = time.perf_counter() - start
    params, states, total = denormal_counts(model, trainer.optimizer)
    state = (copy.deepcopy(model.state_dict()), copy.deepcopy(trainer.optimizer.state_dict()))
    times = {False: [], True: []}
    for _ in range(args.rounds):
        for flush in (False, True):
            torch.set_flush_denormal(flush)
            model.load_state_dict(state[0])
            trainer.optimizer.load_state_dict(state[1])
            trainer._begin_epoch(args.warm_epochs)
            began = time.perf_counter()
            trainer._train_epoch(train, args.warm_epochs, show_progress=False)
            times[flush].append(time.perf_counter() - began)
            print("flush %s: %.2f s" % (flush, times[flush][-1]), flush=True)
    torch.set_flush_denormal(False)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    env = environment_line("python benchmarks/denormals.py --warm_epochs %d --anneal_epochs %d --rounds %d"
                           % (args.warm_epochs, args.anneal_epochs, args.rounds))
    lines = [env, "",
             "After %d epochs (%.0f s, IEEE arithmetic, tau schedule over %d epochs: tau %.3g at the "
             "timed epoch): %d of %d parameters and %d optimizer-state entries are denormal."
             % (args.warm_epochs, warm, args.anneal_epochs, model.term("DE").tau, params, total, states), "",
             "| epoch %d from that state | median (s) | runs (s) |" % args.warm_epochs, "| --- | --- | --- |",
             "| IEEE (flush_denormal: false) | %.2f | %s |" % (off, ", ".join("%.2f" % t for t in times[False])),
             "| flush-to-zero (the default) | %.2f | %s |" % (on, ", ".join("%.2f" % t for t in times[True])),
             "", "IEEE / flush-to-zero: %.2fx" % (off / on)]
    record("Denormal floats, DE-RRD on CiteULike", lines, enabled=allowed)


if __name__ == "__main__":
    main()
