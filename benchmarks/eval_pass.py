"""A sampled validation pass: RecBole's per-pass redraw of the negatives against
``valid_negatives: fixed`` (drawn once, replayed), beside one training epoch, in one process.

CiteULike (the paper's split, 499 sampled negatives per user), a BPR-20 student; five rounds of
(training epoch, redraw pass, fixed pass), medians.  The share of a run's time that validation
takes at ``eval_step: 5`` is printed for both.

    python benchmarks/eval_pass.py [--data_path ../shared/datasets] [--rounds 5]
"""

import argparse
import statistics
import sys
import time

from _common import add_common_arguments, environment_line, record, record_allowed, require_citeulike


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_common_arguments(parser)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    require_citeulike(args.data_path)
    recording = record_allowed(args)

    import torch

    torch.set_num_threads(args.threads)
    environment = environment_line("python benchmarks/eval_pass.py")  # the load before measuring
    import recbole_derrd  # noqa: F401  (registration)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    from recbole_derrd.trainer import FixedCandidates, safe_trainer

    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from argv
    config = Config(model="BPR", dataset="citeulike",
                    config_file_list=["results/citeulike/citeulike-bpr.yaml"],
                    config_dict={"data_path": args.data_path, "embedding_size": 20, "state": "ERROR",
                                 "checkpoint_dir": "/tmp/recbole_derrd_eval_pass"})
    init_seed(0, True)
    train, valid, _ = data_preparation(config, create_dataset(config))
    trainer = safe_trainer(config, get_model("BPR")(config, train._dataset))
    trainer._train_epoch(train, 0)  # warm-up
    fixed = FixedCandidates.of(valid, config["seed"])
    times = {"training epoch": [], "validation, redraw": [], "validation, fixed": []}
    for round_ in range(args.rounds):
        for label, action in (("training epoch", lambda: trainer._train_epoch(train, round_ + 1)),
                              ("validation, redraw", lambda: trainer.evaluate(valid, load_best_model=False)),
                              ("validation, fixed", lambda: trainer.evaluate(fixed, load_best_model=False))):
            start = time.perf_counter()
            action()
            times[label].append(time.perf_counter() - start)
    median = {label: statistics.median(values) for label, values in times.items()}
    lines = [environment, "",
             "| step | median (s) | all rounds (s) |", "| --- | --- | --- |"]
    lines += ["| %s | %.3f | %s |" % (label, median[label], ", ".join("%.3f" % v for v in values))
              for label, values in times.items()]
    epoch, redraw, fixed_pass = median["training epoch"], median["validation, redraw"], median["validation, fixed"]
    lines += ["", "redraw / fixed: %.1fx; validation's share of a run at eval_step 5: %.0f%% (redraw), "
              "%.0f%% (fixed)" % (redraw / fixed_pass, 100 * redraw / (5 * epoch + redraw),
                                  100 * fixed_pass / (5 * epoch + fixed_pass))]
    record("Validation pass, CiteULike BPR-20 (eval_pass.py)", lines, enabled=recording)


if __name__ == "__main__":
    main()
