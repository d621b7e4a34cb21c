"""Time to quality: how long until each method's student is as good as it gets (issue 17).

Per-epoch ratios say little about what a user waits for: a method may take longer per epoch and
fewer epochs, or spend most epochs in a phase that costs more than the rest.  This benchmark
trains each method with the results' early-stopping rule and reports, side by side in one run:

* methods: the student alone, RRD, DE, DE-RRD, IR-RRD, DE + IR-RRD, HTD and RCE-KD (the accuracy issue's methods
  join as they land);
* time to the best validation NDCG@10: the training clock (the method's one-off setup, e.g. the
  teacher's top-N, included; the shared teacher's own training not) up to the end of the
  evaluation that found the best validation score (``seconds_to_best`` of the trainer);
* total training time, best / last evaluated epoch, best validation and test NDCG@10;
* the ratio of each method's median time to quality over the student alone's;
* a **reference** row: DE-RRD computed the straightforward way the official code does
  (``kd_implementation: reference``: every expert densely at every tau, three DE calls per
  batch, autograd RRD), the same losses, so the ratio to the peer is measured.  With
  ``--reference_epochs N`` it runs N epochs only and its time to quality is extrapolated from
  its measured seconds per epoch to the epochs DE-RRD needed (labelled "extrapolated").

Data: ``citeulike`` (the paper's split, ``results/citeulike/citeulike-bpr.yaml``: 300-epoch cap,
evaluation every 5 epochs, stop after 4 without improvement) or ``ml1m-shaped`` (seeded synthetic
power-law data with MovieLens-1M's shape, 6,040 users x 3,706 items x 600,000 interactions, and a
latent taste a large model learns better than a small one (``--synthetic popularity``: the
popularity laws alone, where the teacher has nothing to teach); leave-one-out in random order,
499 sampled negatives, the same stopping rule).

Every (variant, method, seed) is a comparison cell (resumable; a finished cell is never
recomputed) under ``--out_dir``; the teacher is trained once per seed into ``<out_dir>/teachers``
(or given with ``--teacher_checkpoint``) and every row distils that one: its epoch cap is
``--epochs`` whatever a row's own, and a row whose settings would train another teacher stops
the run before its cell is recorded.  ``--variant label:key=value,...`` adds DE-RRD with
other settings (e.g. ``rows-epoch:de_rows=epoch``).  With one out_dir per dataset, ``--summary``
prints their tables and the one-line summary that RESULTS.md records end with.

    python benchmarks/time_to_quality.py --dataset citeulike --seeds 0,1,2 --out_dir runs/ttq-citeulike
    python benchmarks/time_to_quality.py --dataset ml1m-shaped --epochs 60 --reference_epochs 5 \\
        --out_dir runs/ttq-ml1m
    python benchmarks/time_to_quality.py --summary runs/ttq-citeulike runs/ttq-ml1m
    python benchmarks/time_to_quality.py --summary runs/ttq-citeulike runs/ttq-ml1m \\
        --derrd_row ml1m-shaped=every32cap64   # a variant's row stands for DE-RRD there

``--methods Student,DERRD`` runs a subset (the student alone is always among them).
"""

import argparse
import json
import os
import statistics
import sys

from _common import ROOT, SHARED_DATA, check_quiet, cpu_model, environment_line, record

CITEULIKE_CONFIG = os.path.join(ROOT, "results", "citeulike", "citeulike-bpr.yaml")
ML1M_SHAPE = {"users": 6040, "items": 3706, "interactions": 600000}
#: the methods of every run, in table order; REFERENCE is DE-RRD with kd_implementation: reference
METHODS = ("Student", "RRD", "DE", "DERRD", "IRRRD", "DEIRRRD", "HTD", "RCEKD")
REFERENCE = "reference"
PROTOCOL = {"eval_step": 5, "stopping_step": 4, "valid_metric": "NDCG@10",
            "metrics": ["Hit", "MRR", "NDCG"], "topk": [5, 10, 20], "show_progress": False}


#: the low-rank synthetic data's taste: on the ML-1M shape a BPR-200 reached validation N@10 .1295
#: against a BPR-20's .0744 (full ranking, 40-epoch cap, seed 0; a pilot, not recorded), while on the
#: popularity-only data the teacher was no better than the student (RESULTS.md, 2026-12-02 07:21)
LOW_RANK = {"rank": 32, "strength": 2.5}


def ml1m_shaped(data_dir, shape=None, seed=0, synthetic="low_rank"):
    """Write (once) the synthetic MovieLens-1M-shaped dataset; returns (dataset, data_path).
    ``shape`` (users, items, interactions) other than ML-1M's gets a name of its own;
    ``synthetic``: ``low_rank`` (taste a large model learns better: :data:`LOW_RANK`) or
    ``popularity`` (the popularity laws alone, as first recorded: nothing for a teacher to teach)."""
    from recbole_derrd.harness.synthetic import generate, generate_low_rank, write_atomic

    shape = shape or (ML1M_SHAPE["users"], ML1M_SHAPE["items"], ML1M_SHAPE["interactions"])
    name = "ml1m_shaped" if list(shape) == list(ML1M_SHAPE.values()) else "synthetic_%d_%d_%d" % tuple(shape)
    if synthetic == "low_rank":
        name += "_low_rank_%d_%g" % (LOW_RANK["rank"], LOW_RANK["strength"])
    if not os.path.isfile(os.path.join(data_dir, name, name + ".inter")):
        minimum = min(20, shape[2] // shape[0])
        if synthetic == "low_rank":
            users, items = generate_low_rank(*shape, min_per_user=minimum, seed=seed, **LOW_RANK)
        else:
            users, items = generate(*shape, min_per_user=minimum, seed=seed)
        write_atomic(data_dir, name, users + 1, items + 1)
    return name, data_dir


def run_settings(args):
    """(dataset, config files, config dict) of the chosen data."""
    settings = dict(PROTOCOL, epochs=args.epochs, **parse_pairs(args.set, "--set"))
    # the teacher's cap is the run's, never a row's: the reference's --reference_epochs (or a
    # variant's epochs) must not give it a teacher of its own through t_epochs' fallback
    settings.setdefault("t_epochs", args.epochs)
    if args.teacher_checkpoint:
        settings["teacher_checkpoint"] = args.teacher_checkpoint
    else:
        settings["teacher_cache_dir"] = os.path.join(os.path.abspath(args.out_dir), "teachers")
    if args.dataset == "citeulike":
        if not os.path.isdir(os.path.join(args.data_path, "citeulike")):
            sys.exit("CiteULike not found under %s (--data_path)" % args.data_path)
        return "citeulike", [CITEULIKE_CONFIG], dict(settings, data_path=args.data_path)
    shape = [int(x) for x in args.shape.split(",")] if args.shape else None
    dataset, data_path = ml1m_shaped(args.data_dir, shape, synthetic=args.synthetic)
    settings.update(data_path=data_path, load_col={"inter": ["user_id", "item_id"]},
                    eval_args={"split": {"LS": "valid_and_test"}, "order": "RO", "group_by": "user",
                               "mode": "uni499"})
    return dataset, [], settings


def parse_pairs(pairs, flag):
    """['key=value', ...] -> {key: value}, values read as YAML scalars (safe_load: data only)."""
    import yaml

    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            sys.exit("%s %r is not key=value" % (flag, pair))
        settings[key.strip()] = yaml.safe_load(value)
    return settings


def parse_variants(texts):
    """['label:key=value,key=value'] -> {label: {key: value}}."""
    variants = {}
    for text in texts:
        label, _, pairs = text.partition(":")
        if not label or not pairs or label in METHODS + (REFERENCE,):
            sys.exit("--variant %r: expected label:key=value[,key=value], a new label" % text)
        variants[label] = parse_pairs(pairs.split(","), "--variant %s:" % label)
    return variants


def parse_methods(text, reference_epochs, no_reference):
    """'Student,DERRD' -> the chosen methods in table order (the student alone always included:
    every ratio is over it; DE-RRD too when the reference is extrapolated from its epochs)."""
    chosen = [m.strip() for m in text.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(METHODS))
    if unknown:
        sys.exit("--methods: unknown %s; choose from %s" % (", ".join(unknown), ",".join(METHODS)))
    if "Student" not in chosen:
        sys.exit("--methods: Student is required (every ratio is over the student alone)")
    if reference_epochs and not no_reference and "DERRD" not in chosen:
        sys.exit("--methods: DERRD is required when --reference_epochs extrapolates from its epochs")
    return tuple(m for m in METHODS if m in chosen)


def rows_to_run(args):
    """[(label, method, extra settings)] in table order."""
    rows = [(m, m, {}) for m in parse_methods(args.methods, args.reference_epochs, args.no_reference)]
    rows += [(label, "DERRD", extra) for label, extra in parse_variants(args.variant).items()]
    reference = {"kd_implementation": "reference", "de_rows": "batch", "de_max_rows": 0, "de_every": 1, "rrd_max_rows": 0}
    if args.reference_epochs:
        reference["epochs"] = args.reference_epochs
    if not args.no_reference:
        rows.append((REFERENCE, "DERRD", reference))
    return rows


def _teachers(settings):
    """The cached teacher files (empty when the teacher is given as a checkpoint)."""
    folder = settings.get("teacher_cache_dir")
    if not folder or not os.path.isdir(folder):
        return set()
    return {name for name in os.listdir(folder) if name.endswith(".pth")}


def run(args):
    from recbole_derrd.atomic import atomic_write_text
    from recbole_derrd.harness.comparison import prepare_seed_teacher, run_cell

    dataset, files, settings = run_settings(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    cells = {}
    for seed in seeds:
        prepare_seed_teacher(seed, dataset, files, settings, args.out_dir)
        for label, method, extra in rows_to_run(args):
            teachers_before = _teachers(settings)
            folder = os.path.join(args.out_dir, label)
            path = os.path.join(folder, "%s-seed%d.json" % (method, seed))
            if os.path.isfile(path):
                with open(path) as handle:
                    cells[(label, seed)] = json.load(handle)
                print("%s, seed %d: done before" % (label, seed), flush=True)
                continue
            print("%s, seed %d: training" % (label, seed), flush=True)
            cell = run_cell(method, seed, dataset, files, dict(settings, **extra), folder)
            if _teachers(settings) - teachers_before:
                # the row's settings reached its teacher (t_ keys fall back to the student's):
                # its time and accuracy would not be against the seed's shared teacher
                sys.exit("%s, seed %d: its settings %s trained a teacher of its own; give the "
                         "teacher's keys explicitly (--set t_<key>=...) so every row shares the "
                         "seed's teacher (the cell was not recorded)" % (label, seed, extra))
            cell = {k: v for k, v in cell.items() if k != "per_user"}
            cell.update(label=label, settings=extra)
            atomic_write_text(path, json.dumps(cell))  # a half-written cell never counts as done
            cells[(label, seed)] = cell
    atomic_write_text(os.path.join(args.out_dir, "time_to_quality.json"), json.dumps(
        {"dataset": args.dataset, "seeds": seeds, "reference_epochs": args.reference_epochs,
         "cells": list(cells.values())}, indent=1))
    return table(cells, seeds, args.dataset, args.reference_epochs)


def _median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def table(cells, seeds, dataset, reference_epochs):
    """(markdown lines, {label: median time to quality}) of one dataset's cells."""
    labels = list(dict.fromkeys(label for label, _ in cells))
    to_best = {}
    lines = ["| method | seeds | to best valid (s), median | spread | total train (s), median | "
             "best / last epoch | best valid N@10 | test N@10 (mean) | vs student |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    derrd_epochs = _median([cells[("DERRD", s)]["best_epoch"] for s in seeds if ("DERRD", s) in cells])
    for label in labels:
        runs = [cells[(label, s)] for s in seeds if (label, s) in cells]
        times = [r.get("seconds_to_best") for r in runs]
        note = ""
        if label == REFERENCE and reference_epochs:
            # dense at every tau: seconds per epoch are flat; scale to DE-RRD's epochs to its best
            per_epoch = _median([r["fit_seconds"] / (r["last_epoch"] + 1) for r in runs])
            times = [per_epoch * (derrd_epochs + 1)] if derrd_epochs is not None else [None]
            note = " (extrapolated from %d epochs)" % reference_epochs
        median = _median(times)
        to_best[label] = median
        spread = (max(times) - min(times)) / median if median and len(times) > 1 and None not in times else None
        valid = [r["best_valid_result"].get("ndcg@10") for r in runs]
        test = [r["test_result"].get("ndcg@10") for r in runs]
        lines.append("| %s%s | %d | %s | %s | %s | %s | %s | %s | %s |" % (
            label, note, len(runs), _fmt(median, "%.0f"), _fmt(spread, "%.0f%%", 100),
            _fmt(_median([r.get("fit_seconds") for r in runs]), "%.0f"),
            ", ".join("%s/%s" % (r["best_epoch"], r["last_epoch"]) for r in runs),
            _fmt(_median(valid), "%.4f"), _fmt(statistics.mean(test) if test else None, "%.4f"),
            _ratio(median, to_best.get("Student"))))
    lines += ["", "Dataset: %s. Medians over seeds; spread = (max - min) / median of the time to quality."
              % dataset]
    return lines, to_best


def _fmt(value, pattern, scale=1):
    return "-" if value is None else pattern % (value * scale)


def _ratio(value, base):
    return "-" if value is None or not base else "%.2fx" % (value / base)


def summary_line(citeulike, ml1m):
    """The one line each RESULTS.md record ends with (read by scripts)."""
    def ratio(times, a, b):
        return "n/a" if not times or not times.get(a) or not times.get(b) else "%.2f" % (times[a] / times[b])

    return ("time to quality: DE-RRD/student %sx (CiteULike), %sx (ML-1M-shaped); reference/DE-RRD %sx (CiteULike)"
            % (ratio(citeulike, "DERRD", "Student"), ratio(ml1m, "DERRD", "Student"),
               ratio(citeulike, REFERENCE, "DERRD")))


def summary_row(to_best, label, dataset):
    """``to_best`` with the row ``label`` standing for DE-RRD: a variant with the dataset's recipe
    (e.g. de_every / rrd_max_rows chosen on validation) rather than the run-wide settings."""
    if label not in to_best:
        sys.exit("--derrd_row %s=%s: no such row in the %s run (rows: %s)"
                 % (dataset, label, dataset, ", ".join(to_best)))
    return dict(to_best, DERRD=to_best[label])


def load_times(out_dir):
    with open(os.path.join(out_dir, "time_to_quality.json")) as handle:
        data = json.load(handle)
    cells = {(c["label"], c["seed"]): c for c in data["cells"]}
    return data["dataset"], table(cells, data["seeds"], data["dataset"], data["reference_epochs"])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("citeulike", "ml1m-shaped"), default="citeulike")
    parser.add_argument("--data_path", default=SHARED_DATA, help="folder holding citeulike/")
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "runs", "data"),
                        help="where the synthetic data is written")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--methods", default=",".join(METHODS),
                        help="comma-separated subset of %s (Student always)" % ",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=300, help="epoch cap")
    parser.add_argument("--reference_epochs", type=int, default=0,
                        help="run the reference this many epochs and extrapolate (0: run it fully)")
    parser.add_argument("--no_reference", action="store_true")
    parser.add_argument("--variant", action="append", default=[], help="label:key=value,... (DE-RRD)")
    parser.add_argument("--teacher_checkpoint")
    parser.add_argument("--set", action="append", default=[], help="key=value for every run")
    parser.add_argument("--shape", help="synthetic users,items,interactions (default: ML-1M's)")
    parser.add_argument("--synthetic", choices=("low_rank", "popularity"), default="low_rank",
                        help="synthetic data with latent taste (default) or popularity alone (as first recorded)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out_dir", default=os.path.join(ROOT, "runs", "time_to_quality"))
    parser.add_argument("--summary", nargs="+", metavar="RUN_DIR",
                        help="print the tables and the summary line of finished runs (one per dataset)")
    parser.add_argument("--derrd_row", action="append", default=[], metavar="DATASET=LABEL",
                        help="with --summary: the row whose time stands for DE-RRD on that dataset "
                             "(e.g. ml1m-shaped=every32cap64; default: the DERRD row)")
    parser.add_argument("--record", action="store_true",
                        help="append the tables to benchmarks/RESULTS.md (refused on a busy machine)")
    parser.add_argument("--max_load", type=float, default=0.7)
    args = parser.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    header = [environment_line("python benchmarks/time_to_quality.py " + " ".join(argv or sys.argv[1:])),
              "CPU: %s; torch threads: %d" % (cpu_model(), torch.get_num_threads()), ""]
    if args.summary:
        times, lines = {}, list(header)
        chosen = parse_pairs(args.derrd_row, "--derrd_row")
        for out_dir in args.summary:
            dataset, (table_lines, to_best) = load_times(out_dir)
            if dataset in times:
                sys.exit("--summary: two runs of %s; give one run per dataset" % dataset)
            lines += table_lines + [""]
            if dataset in chosen:
                to_best = summary_row(to_best, str(chosen[dataset]), dataset)
                lines += ["DE-RRD in the summary line (%s): the row %s." % (dataset, chosen[dataset]), ""]
            times[dataset] = to_best
        if set(chosen) - set(times):
            sys.exit("--derrd_row: no run of %s among %s" % (", ".join(sorted(set(chosen) - set(times))),
                                                          " ".join(args.summary)))
        lines.append(summary_line(times.get("citeulike"), times.get("ml1m-shaped")))
        record("Time to quality (%s)" % ", ".join(sorted(times)), lines, enabled=args.record)
        return
    quiet_before = check_quiet(args.max_load, force=True)
    table_lines, to_best = run(args)
    # the run's own threads keep the load average up at its end; more than that is another job
    quiet_after = check_quiet(args.max_load + torch.get_num_threads(), force=True)
    lines = header + table_lines + ["", summary_line(to_best if args.dataset == "citeulike" else None,
                                                     to_best if args.dataset == "ml1m-shaped" else None)]
    if not (quiet_before and quiet_after):
        lines.append("(the load average exceeded %.2f at the start, or %.2f plus the run's threads at the "
                     "end: not a timing record)" % (args.max_load, args.max_load))
    record("Time to quality, %s" % args.dataset, lines,
           enabled=args.record and quiet_before and quiet_after)


if __name__ == "__main__":
    main()
