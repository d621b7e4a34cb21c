"""One-command comparison: the teacher, the student alone, RD, CD, DE, RRD, DE-RRD and any
RecBole model, on one split, with the same test negatives, over seeds, in the paper's layout.

Every (method, seed) pair is a *cell* with its own folder under ``<out_dir>/checkpoints``. A
finished cell's result is written to ``<out_dir>/cells/<method>-seed<s>.json`` and never
recomputed; an interrupted cell restarts from its last per-epoch checkpoint (``-last.pth``).
Both only under the settings the cell recorded (:mod:`~recbole_derrd.harness.cell_settings`): a
cell run with other settings is refused, naming what changed, instead of being mixed in.
The teacher of each seed is trained once into ``<out_dir>/teachers`` and shared by all
distilled methods. The Teacher and Student cells also keep their per-user validation metrics:
the teacher is tested against the student alone on validation, with a warning when it is not
significantly better (distillation then has little to transfer). After the last cell, the
tables are written as ``comparison.md``, ``comparison.csv`` and ``comparison.json``, and (with
matplotlib, an optional extra) ``comparison.png``: accuracy against parameters and against
inference time.  Each seed's teacher is prepared before its cells, so no method's train time
includes it.

    python run_recbole_derrd.py --compare=all --seeds=0,1,2 --baselines=Pop,ItemKNN \\
        --out_dir=comparison/ml-100k
"""

import csv
import glob
import io
import json
import os
import sys
import time
from logging import getLogger

import numpy as np

from recbole_derrd.atomic import atomic_write_text
from recbole_derrd.backbone_support import model_size
from recbole_derrd_hook import MODEL_NAMES
from recbole_derrd.harness.cell_settings import (EXTENSION_KEYS, SETTINGS_FILE, describe, describe_teacher_cell,
                                                 differences)
from recbole_derrd.harness.tables import markdown_table
from recbole_derrd.evaluation import PAIRED_METRICS, over_seeds, paired_test, per_user_over_seeds

DERRD_FAMILY = ("DE", "RRD", "DERRD")
#: "all": the paper's table (its baselines RD and CD, then the DE-RRD family); later methods
#: (IRRRD, ...) run when named
DISTILLATION_METHODS = ("RD", "CD") + DERRD_FAMILY
STUDENT = "Student"
#: the seed's teacher itself, tested with the same negatives (its training is the pre-step)
TEACHER = "Teacher"
DEFAULT_METHODS = (TEACHER, STUDENT) + DISTILLATION_METHODS
#: the paper's columns
TABLE_METRICS = tuple("%s@%d" % (m, k) for m in ("hit", "mrr", "ndcg") for k in (5, 10, 20))
#: stock training keys a RecBole baseline takes from the student, for a like-for-like budget
SHARED_TRAINING_KEYS = ("embedding_size", "epochs", "stopping_step", "eval_step", "train_batch_size",
                        "learning_rate", "weight_decay")


def _newest(pattern):
    files = glob.glob(pattern)
    return max(files, key=os.path.getmtime) if files else None


def _cell_path(out_dir, method, seed):
    return os.path.join(out_dir, "cells", "%s-seed%d.json" % (method, seed))


def _inference_seconds(model, users=256, k=20):
    """Median time to rank the whole catalogue for ``users`` users (top-``k``)."""
    import torch

    from recbole_derrd.serving.inference import recommend

    backbone = getattr(model, "student", model)
    ids = torch.arange(1, min(users + 1, backbone.n_users))
    times = []
    for _ in range(3):
        start = time.perf_counter()
        recommend(backbone, ids, k=min(k, backbone.n_items - 1))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


#: the plugin model whose Config derives the teacher's and the student's settings for the
#: teacher, student-alone and baseline cells: RRD fits every pair that can be distilled (a
#: score-only teacher, a sequential pair), and its teacher settings are DE-RRD's
HOLDER = "RRD"


def _settings(config_dict, seed, out_dir, folder):
    """The run's settings for one seed: its own checkpoint folder, the shared teacher cache
    (``teacher_cache_dir`` when the run gives one, else ``<out_dir>/teachers``)."""
    config_dict = dict(config_dict or {})
    return dict(config_dict, seed=seed, checkpoint_dir=os.path.join(out_dir, "checkpoints", folder),
                teacher_cache_dir=config_dict.get("teacher_cache_dir") or os.path.join(out_dir, "teachers"))


def _cell_config(method, seed, dataset, config_file_list, config_dict, out_dir):
    """(the Config a cell trains with, its checkpoint folder, its settings description).

    The teacher cell's Config is the HOLDER's, and its description the teacher's settings."""
    from recbole.config import Config

    from recbole_derrd.config import plugin_owned_keys, student_config
    from recbole_derrd.registration import PLUGIN_MODELS

    folder = "teacher-seed%d" % seed if method == TEACHER else "%s-seed%d" % (method, seed)
    settings = _settings(config_dict, seed, out_dir, folder)
    if method in (TEACHER, STUDENT) or method in PLUGIN_MODELS:
        plugin = Config(model=method if method in PLUGIN_MODELS else HOLDER, dataset=dataset,
                        config_file_list=config_file_list, config_dict=settings)
        if method == TEACHER:
            return plugin, settings["checkpoint_dir"], describe_teacher_cell(TEACHER, plugin)
        if method == STUDENT:
            config = student_config(plugin, plugin_owned_keys(plugin, PLUGIN_MODELS.values()))
            return config, settings["checkpoint_dir"], describe(method, config)
        return plugin, settings["checkpoint_dir"], describe(method, plugin, PLUGIN_MODELS[method])
    # a stock RecBole model, trained with the student's budget and size
    plugin = Config(model=HOLDER, dataset=dataset, config_file_list=config_file_list, config_dict=settings)
    shared = {key: plugin[key] for key in SHARED_TRAINING_KEYS if plugin[key] is not None}
    config = Config(model=method, dataset=dataset, config_file_list=config_file_list,
                    config_dict=dict(shared, **settings))
    return config, settings["checkpoint_dir"], describe(method, config)


def check_cell_settings(recorded, current, what, remedy, extending=False):
    """Refuse (ValueError naming the changed keys) to reuse a cell run with other settings."""
    if recorded is None:
        return
    changed = differences(recorded, current, EXTENSION_KEYS if extending else ())
    if changed:
        raise ValueError("%s was run with other settings (%s%s); %s" % (
            what, "; ".join(changed[:6]), "; ..." if len(changed) > 6 else "", remedy))


def _resumable_checkpoint(checkpoint_dir, description, what, extending):
    """The cell's -last checkpoint to resume from, after checking it was trained with these
    settings; records them for the next resume.  Checkpoints written before settings were
    recorded are resumed as before (nothing to compare them with)."""
    last = _newest(os.path.join(checkpoint_dir, "*-last.pth"))
    path = os.path.join(checkpoint_dir, SETTINGS_FILE)
    if last is not None and os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            check_cell_settings(json.load(handle), description, what,
                                "remove %s to train it from scratch, or use another out_dir" % checkpoint_dir,
                                extending)
    os.makedirs(checkpoint_dir, exist_ok=True)
    atomic_write_text(path, json.dumps(description, sort_keys=True))
    return last


def run_cell(method, seed, dataset, config_file_list, config_dict, out_dir, extend_to=None):
    """Train and test one (method, seed) cell; returns its result dict (JSON-ready).

    ``extend_to``: continue the cell's run from its last checkpoint up to this epoch cap (the
    teacher keeps its own epochs, so its cache entry is the same)."""
    from recbole_derrd.quick_start import load_data, train_and_test

    if method == TEACHER:
        return _teacher_cell(seed, dataset, config_file_list, config_dict, out_dir)
    config, checkpoint_dir, description = _cell_config(method, seed, dataset, config_file_list, config_dict, out_dir)
    last = _resumable_checkpoint(checkpoint_dir, description, "%s, seed %d" % (method, seed), bool(extend_to))
    config.final_config_dict["resume"] = last
    if extend_to:
        if last is None:
            raise ValueError("cannot continue %s, seed %d: no -last checkpoint in %s"
                             % (method, seed, checkpoint_dir))
        if "t_epochs" in config and config["t_epochs"] is None:
            config.final_config_dict["t_epochs"] = config["epochs"]
        config.final_config_dict["epochs"] = extend_to
    data, train_data, valid_data, test_data = load_data(config)
    start = time.perf_counter()
    result, model, per_user = train_and_test(config, data, train_data, valid_data, test_data, saved=True)
    elapsed = time.perf_counter() - start
    deployable = getattr(model, "student", model)
    from recbole_derrd.harness.side_by_side import validation_per_user

    # the student alone's per-user validation metrics (its best model, loaded for the test):
    # what the teacher is tested against before anyone looks at test
    valid_users = validation_per_user(config, model, valid_data) if method == STUDENT else None
    return {
        "method": method, "seed": seed, "model": config["model"], "settings": description,
        **_tested(result["test_result"], per_user, config, valid_users),
        "best_valid_result": {k: float(v) for k, v in result["best_valid_result"].items()},
        "parameters": int(model_size(deployable)),
        "train_and_test_seconds": elapsed, "resumed_from": last,
        "inference_seconds_256_users": _inference_seconds(model),
        **cell_epochs(checkpoint_dir),
        "cap_bound": bool(result.get("cap_bound")),
        "seconds_to_best": result.get("seconds_to_best"), "fit_seconds": result.get("fit_seconds"),
        "seconds_per_epoch": result.get("seconds_per_epoch"), "valid_curve": result.get("valid_curve"),
    }


def _tested(test_result, per_user, config, valid_per_user=None):
    """The test fields every cell shares: metrics, per-user metrics for the paired tests, mode
    (and, for the Teacher and Student cells, the per-user validation metrics)."""
    tested = {
        "test_result": {k: float(v) for k, v in test_result.items()},
        "per_user": _per_user_lists(per_user),
        "test_mode": _test_mode(config),
    }
    if valid_per_user is not None:
        tested["valid_per_user"] = _per_user_lists(valid_per_user)
    return tested


def _per_user_lists(per_user):
    return {m: np.asarray(per_user[m]).tolist() for m in PAIRED_METRICS if m in per_user}


def _test_mode(config):
    mode = config["eval_args"]["mode"]
    return mode["test"] if isinstance(mode, dict) else mode


def cell_epochs(checkpoint_dir):
    """{'best_epoch', 'last_epoch'} read from a cell's checkpoints (RecBole counts from 0).

    ``last_epoch`` is the last evaluated epoch: below the ``epochs`` cap minus one, early
    stopping ended the run; at it, the cap did (and the method may not have converged).
    """
    from recbole_derrd.checkpoints import load_checkpoint

    last = _newest(os.path.join(checkpoint_dir, "*-last.pth"))
    best = [f for f in glob.glob(os.path.join(checkpoint_dir, "*.pth")) if not f.endswith("-last.pth")]
    epochs = {"best_epoch": None, "last_epoch": None}
    if best:
        epochs["best_epoch"] = int(load_checkpoint(max(best, key=os.path.getmtime), map_location="cpu")["epoch"])
    if last:
        epochs["last_epoch"] = int(load_checkpoint(last, map_location="cpu")["epoch"])
    return epochs


def _seed_teacher(seed, dataset, config_file_list, config_dict, out_dir):
    """(HOLDER model holding the seed's trained teacher, its config, (validation, test) data,
    seconds spent)."""
    from recbole.config import Config
    from recbole.utils import get_model

    from recbole_derrd.quick_start import load_data
    from recbole_derrd.teacher import prepare_teacher

    config = Config(model=HOLDER, dataset=dataset, config_file_list=config_file_list,
                    config_dict=_settings(config_dict, seed, out_dir, "teacher-seed%d" % seed))
    _, train_data, valid_data, test_data = load_data(config)
    model = get_model(HOLDER)(config, train_data._dataset)
    start = time.perf_counter()
    prepare_teacher(model, train_data, valid_data, show_progress=config["show_progress"])
    return model, config, (valid_data, test_data), time.perf_counter() - start


def _teacher_cell(seed, dataset, config_file_list, config_dict, out_dir):
    """The teacher's own row: tested like every cell (re-seeded, same negatives).

    It prepares (trains or loads) the seed's teacher itself; ``teacher_prepare_seconds`` is that time.
    """
    from recbole_derrd.harness.side_by_side import teacher_row, validation_per_user

    model, config, (valid_data, test_data), prepare_seconds = _seed_teacher(seed, dataset, config_file_list,
                                                                            config_dict, out_dir)
    description = describe_teacher_cell(TEACHER, config)
    start = time.perf_counter()
    row, per_user = teacher_row(model, config, test_data)
    elapsed = time.perf_counter() - start
    valid_users = validation_per_user(model.teacher_config, model.teacher, valid_data)
    return {
        "method": TEACHER, "seed": seed, "model": model.teacher_config["model"], "settings": description,
        **_tested(row["test_result"], per_user, config, valid_users),
        "best_valid_result": _teacher_validation(model, config), "parameters": int(row["parameters"]),
        "train_and_test_seconds": None, "test_seconds": elapsed, "resumed_from": None,
        "teacher_prepare_seconds": prepare_seconds,
        "inference_seconds_256_users": _inference_seconds(model.teacher),
        "best_epoch": model.teacher_epoch, "last_epoch": None,
    }


def _teacher_validation(model, config):
    """{valid_metric: the teacher's best validation score} (None when its checkpoint lacks it)."""
    score = getattr(model, "teacher_valid_score", None)
    return None if score is None else {config["valid_metric"].lower(): float(score)}


def prepare_seed_teacher(seed, dataset, config_file_list, config_dict, out_dir):
    """Train (or find cached) the seed's teacher before its cells; returns the seconds spent.

    Done once per seed up front, so no method's train time includes the teacher's.
    """
    return _seed_teacher(seed, dataset, config_file_list, config_dict, out_dir)[3]


def summarise(cells, methods, seeds):
    """Mean +- std per method over seeds, best per column, and the paired tests."""
    rows = []
    for method in methods:
        runs = [cells[(method, s)] for s in seeds]
        metrics = [m for m in TABLE_METRICS if m in runs[0]["test_result"]]
        stats = over_seeds([r["test_result"] for r in runs], metrics)
        inference = [r["inference_seconds_256_users"] for r in runs if r["inference_seconds_256_users"]]
        rows.append({
            "method": method, "model": runs[0]["model"], "parameters": runs[0]["parameters"],
            "mean": stats["mean"], "std": stats["std"],
            "train_seconds": _mean_or_none([r["train_and_test_seconds"] for r in runs]),
            # time to quality: training until the best validation evaluation, median over seeds
            "seconds_to_best": _median_or_none([r.get("seconds_to_best") for r in runs]),
            # training cost per epoch (evaluations excluded), median over seeds
            "seconds_per_epoch": _median_or_none([r.get("seconds_per_epoch") for r in runs]),
            # a resumed cell's clock started at its resume: its time undercounts the training
            "resumed": any(r.get("resumed_from") for r in runs),
            "continued": any(r.get("continued_from") for r in runs),
            "epochs": [_epochs_text(r) for r in runs],
            "inference_seconds_256_users": float(np.median(inference)) if inference else None,
        })
    _add_teacher_gaps(rows, cells, methods, seeds)
    metrics = list(rows[0]["mean"])
    contenders = [row for row in rows if row["method"] != TEACHER] or rows
    best = {m: max(row["mean"][m] for row in contenders) for m in metrics}
    baselines = [row for row in rows if row["method"] not in (TEACHER, STUDENT) + DERRD_FAMILY]
    best_baseline = max(baselines, key=lambda row: row["mean"].get("ndcg@10", 0))["method"] if baselines else None

    def per_user(method):  # per-user metrics averaged over seeds (same split and negatives)
        return per_user_over_seeds([cells[(method, s)]["per_user"] for s in seeds])

    tests = []
    # each pair once, against the student alone first (so "HTD vs Student", not "Student vs HTD"
    # again when HTD is the best baseline); listed in the rows' order
    tested, order = set(), {row["method"]: i for i, row in enumerate(rows)}
    for reference in (STUDENT, best_baseline):
        for row in rows:
            pair = frozenset((reference, row["method"]))
            if reference is None or reference == row["method"] or STUDENT not in methods or pair in tested:
                continue
            tested.add(pair)
            for metric in PAIRED_METRICS:
                t = paired_test(per_user(reference), per_user(row["method"]), metric)
                tests.append(dict(t, method=row["method"], reference=reference))
    tests.sort(key=lambda t: order[t["method"]])  # stable: the student-alone test stays first
    return {"rows": rows, "metrics": metrics, "best": best, "best_baseline": best_baseline, "tests": tests,
            "teacher_valid_tests": teacher_validation_tests(cells, methods, seeds)}


def teacher_validation_tests(cells, methods, seeds):
    """The teacher against the student alone on validation, per user (averaged over seeds),
    one test per paired metric; ``None`` when a Teacher or Student cell lacks the per-user
    validation metrics (not run, or written before they were kept)."""
    if TEACHER not in methods or STUDENT not in methods:
        return None
    runs = {m: [cells[(m, s)].get("valid_per_user") for s in seeds] for m in (TEACHER, STUDENT)}
    if not all(runs[TEACHER]) or not all(runs[STUDENT]):
        return None
    teacher, student = per_user_over_seeds(runs[TEACHER]), per_user_over_seeds(runs[STUDENT])
    return [dict(paired_test(student, teacher, m), method=TEACHER, reference=STUDENT) for m in PAIRED_METRICS]


def teacher_warning(valid_tests):
    """The one-line warning when ``valid_tests`` (:func:`teacher_validation_tests`) find the
    teacher not significantly better than the student alone on validation NDCG@10 (None
    otherwise, or without the tests)."""
    from recbole_derrd.harness.side_by_side import teacher_gap_warning

    test = next((t for t in valid_tests or () if t["metric"] == "ndcg@10"), None)
    return None if test is None else teacher_gap_warning(test)


def _add_teacher_gaps(rows, cells, methods, seeds, test_metric="ndcg@10"):
    """Per row, the teacher's lead over it (mean over seeds of teacher - row, seed by seed) on
    validation (the teacher's ``valid_metric``) and on test ``test_metric``: how much a method
    leaves on the table, and, on the student-alone row, how much the teacher has to teach."""
    teacher = [cells[(TEACHER, s)] for s in seeds] if TEACHER in methods else None
    valid_key = None
    if teacher and all(c.get("best_valid_result") for c in teacher):
        valid_key = next(iter(teacher[0]["best_valid_result"]))
    for row in rows:
        row["gap_valid"] = row["gap_test"] = None
        row["valid_metric"], row["gap_metric"] = valid_key, test_metric
        if not teacher or row["method"] == TEACHER:
            continue
        runs = [cells[(row["method"], s)] for s in seeds]
        if all(test_metric in c["test_result"] for c in runs + teacher):
            row["gap_test"] = float(np.mean([t["test_result"][test_metric] - c["test_result"][test_metric]
                                             for t, c in zip(teacher, runs)]))
        if valid_key and all(valid_key in (c.get("best_valid_result") or {}) for c in runs):
            row["gap_valid"] = float(np.mean([t["best_valid_result"][valid_key] - c["best_valid_result"][valid_key]
                                              for t, c in zip(teacher, runs)]))


def _gap_text(value):
    return "-" if value is None else "%+.4f" % value


def _epochs_text(cell):
    """'best/last' evaluated epoch; '-' where unknown (a teacher's last epoch is not kept);
    ' cap' when the epoch cap ended a run that was still improving on validation."""
    text = "/".join("-" if cell.get(key) is None else str(cell[key]) for key in ("best_epoch", "last_epoch"))
    return text + (" cap" if cell.get("cap_bound") else "")


def _mean_or_none(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _median_or_none(values):
    """The median, or None when any seed lacks the value (cells written before it was kept)."""
    return float(np.median(values)) if values and all(v is not None for v in values) else None


def markdown(summary, title):
    metrics = summary["metrics"]
    names = [m.replace("hit", "H").replace("mrr", "M").replace("ndcg", "N") for m in metrics]
    rows = []
    for row in summary["rows"]:
        cells = []
        for m in metrics:
            text = "%.4f +- %.4f" % (row["mean"][m], row["std"][m])
            best = row["method"] != TEACHER and row["mean"][m] == summary["best"][m]
            cells.append("**%s**" % text if best else text)
        seconds = "-" if row["train_seconds"] is None else "%.0f" % row["train_seconds"]
        seconds += ("*" if row["resumed"] else "") + ("+" if row["continued"] else "")
        to_best = "-" if row["seconds_to_best"] is None else "%.0f" % row["seconds_to_best"]
        per_epoch = "-" if row.get("seconds_per_epoch") is None else "%.2f" % row["seconds_per_epoch"]
        rows.append([row["method"], format(row["parameters"], ",")] + cells
                    + [_gap_text(row["gap_valid"]), _gap_text(row["gap_test"]), seconds, to_best,
                       per_epoch, ", ".join(row["epochs"])])
    tests = [[t["method"], t["reference"], t["metric"], "%+.4f" % t["mean_diff"], "%.3g" % t["p_value"],
              t["n_users"]] for t in summary["tests"]]
    first = summary["rows"][0]
    gap_names = ["teacher lead, valid %s" % (first.get("valid_metric") or "-").replace("ndcg", "N"),
                 "teacher lead, test %s" % first.get("gap_metric", "ndcg@10").replace("ndcg", "N")]
    lines = ["## " + title, "",
             markdown_table(["method", "params"] + names + gap_names
                            + ["train + test (s)", "to best valid (s)", "s/epoch", "best/last epoch"], rows),
             "", "Bold: best mean per column, the teacher excepted. Mean +- std over seeds. Epochs "
             "count from 0, one entry per seed (the teacher: its best epoch only). Teacher lead: teacher - "
             "this row, per seed, averaged (validation: the teacher's valid_metric). To best valid: "
             "training time (the method's setup included, the teacher's training not) until the "
             "evaluation that found the best validation score, median over seeds. s/epoch: one training "
             "epoch's wall time (evaluations excluded), median over seeds. Best baseline (by "
             "N@10, not the teacher, DE/RRD/DE-RRD or the student): %s." % summary["best_baseline"]
             + (" *: resumed from a checkpoint (in at least one seed); the time counts the last process "
                "only (`resumed_from` in the JSON)." if any(r["resumed"] for r in summary["rows"]) else "")
             + (" cap: the epoch cap, not early stopping, ended a run still improving on validation."
                if any(" cap" in e for r in summary["rows"] for e in r["epochs"]) else "")
             + (" +: continued with a larger cap (`--continue_capped`) in at least one seed; the time sums "
                "both processes (`continued_from` in the JSON)." if any(r["continued"] for r in summary["rows"])
                else ""),
             "",
             markdown_table(["method", "vs", "metric", "mean per-user difference", "Wilcoxon p", "users"], tests)]
    valid_tests = summary.get("teacher_valid_tests")
    if valid_tests:
        lines += ["", "On validation (the student alone's best model; no test data): " + "; ".join(
            "teacher vs student alone, %s: mean per-user difference %+.4f, Wilcoxon p = %.3g (%d users)"
            % (t["metric"], t["mean_diff"], t["p_value"], t["n_users"]) for t in valid_tests) + "."]
        warning = teacher_warning(valid_tests)
        if warning:
            lines += ["", "**%s**" % warning]
    return "\n".join(lines) + "\n"


def write_outputs(summary, cells, out_dir, title):
    """comparison.md / .csv / .json, and comparison.png when matplotlib is installed."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {}
    paths["md"] = atomic_write_text(os.path.join(out_dir, "comparison.md"), markdown(summary, title))
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["method", "parameters", "train_seconds", "inference_seconds_256_users"]
                    + ["%s_mean" % m for m in summary["metrics"]] + ["%s_std" % m for m in summary["metrics"]]
                    + ["resumed", "teacher_lead_valid", "teacher_lead_test", "seconds_to_best",
                       "seconds_per_epoch"])
    for row in summary["rows"]:
        writer.writerow([row["method"], row["parameters"],
                         "" if row["train_seconds"] is None else "%.2f" % row["train_seconds"],
                         row["inference_seconds_256_users"]]
                        + ["%.6f" % row["mean"][m] for m in summary["metrics"]]
                        + ["%.6f" % row["std"][m] for m in summary["metrics"]]
                        + [int(row["resumed"])]
                        + ["" if row[k] is None else "%.6f" % row[k] for k in ("gap_valid", "gap_test")]
                        + ["" if row[k] is None else "%.2f" % row[k]
                           for k in ("seconds_to_best", "seconds_per_epoch")])
    paths["csv"] = atomic_write_text(os.path.join(out_dir, "comparison.csv"), table.getvalue())
    paths["json"] = atomic_write_text(os.path.join(out_dir, "comparison.json"), json.dumps(
        {"title": title, **{k: v for k, v in summary.items()},
         "cells": [{k: v for k, v in c.items() if k not in ("per_user", "valid_per_user")}
                   for c in cells.values()]}, indent=1))
    paths["per_user"] = atomic_write_text(os.path.join(out_dir, PER_USER_FILE), json.dumps(
        per_user_record(cells, title)))
    paths["png"] = plot(summary, os.path.join(out_dir, "comparison.png"))
    return paths


#: each row's per-user test metrics, averaged over its seeds: what the paired tests use, kept so
#: that a later run (another folder) can be tested against these rows user by user
PER_USER_FILE = "per-user.json"


def per_user_record(cells, title):
    """{title, seeds, n_users, rows: {method: {metric: [per user, mean over seeds]}}}.

    Only methods whose every cell has per-user metrics, over the seeds they all share."""
    by_method = {}
    for (method, seed), cell in cells.items():
        if cell.get("per_user"):
            by_method.setdefault(method, {})[seed] = cell["per_user"]
    seed_sets = [set(runs) for runs in by_method.values()]
    seeds = sorted(set.intersection(*seed_sets)) if seed_sets else []
    rows = {method: {m: [round(float(v), 6) for v in values]
                     for m, values in per_user_over_seeds([runs[s] for s in seeds]).items()}
            for method, runs in by_method.items()} if seeds else {}
    n_users = len(next(iter(next(iter(rows.values())).values()))) if rows else 0
    modes = sorted({str(cell.get("test_mode")) for cell in cells.values()})
    return {"title": title, "dataset": title.split(",", 1)[0], "test_mode": ",".join(modes), "seeds": seeds,
            "n_users": n_users, "metrics": list(PAIRED_METRICS), "rows": rows}


def paired_between(path_a, method_a, path_b, method_b, metrics=PAIRED_METRICS):
    """Wilcoxon tests (one per metric) of row ``method_b`` of one comparison's per-user.json
    against row ``method_a`` of another's: the same users, seeds and test protocol are required
    (checked)."""
    records = []
    for path, method in ((path_a, method_a), (path_b, method_b)):
        if os.path.isdir(path):
            path = os.path.join(path, PER_USER_FILE)
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        if method not in record.get("rows", {}):
            raise ValueError("%s has no row %r (rows: %s)" % (path, method, sorted(record.get("rows", {}))))
        records.append((path, record))
    (pa, a), (pb, b) = records
    for key in ("dataset", "test_mode", "seeds", "n_users"):
        if a.get(key) != b.get(key):
            raise ValueError("%s and %s differ in %s (%r vs %r): a per-user test needs the same dataset, "
                             "protocol, seeds and users" % (pa, pb, key, a.get(key), b.get(key)))
    return [dict(paired_test(a["rows"][method_a], b["rows"][method_b], metric), method=method_b, reference=method_a)
            for metric in metrics]


def plot(summary, path, metric="ndcg@10"):
    """NDCG@10 against parameters and against inference time; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        getLogger().warning("matplotlib is not installed (pip install recbole-derrd[plot]): no plot")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "parameters", "parameters (a closed-form model: its weight arrays)"),
                           (axes[1], "inference_seconds_256_users", "seconds to rank the catalogue for 256 users")):
        xs = []
        for row in summary["rows"]:
            x = row[key]
            if x is None or metric not in row["mean"]:
                continue
            xs.append(x)
            ax.errorbar(x, row["mean"][metric], yerr=row["std"][metric], fmt="o")
            ax.annotate(row["method"], (x, row["mean"][metric]), textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel(label)
        ax.set_ylabel(metric.upper())
        if xs and min(xs) > 0 and max(xs) / min(xs) > 20:  # log only where it spreads the points
            ax.set_xscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_comparison(dataset=None, config_file_list=None, config_dict=None, methods=DEFAULT_METHODS,
                   baselines=(), seeds=(0,), out_dir="comparison", stream=None, continue_capped=None):
    """Run every (method, seed) cell not finished yet, then write the tables and the plot.

    Finished cells are never recomputed, except with ``continue_capped=N``: a finished cell
    whose epoch cap ended it while it was still improving on validation continues from its last
    checkpoint up to epoch cap N (its train time then sums both processes)."""
    stream = stream or sys.stdout
    methods = tuple(methods) + tuple(b for b in baselines if b not in methods)
    from recbole_derrd.registration import PLUGIN_MODELS

    cells, teacher_seconds, reported = {}, {}, set()
    todo = [(m, s) for s in seeds for m in methods]
    for number, (method, seed) in enumerate(todo, 1):
        path = _cell_path(out_dir, method, seed)
        if method in PLUGIN_MODELS and seed not in teacher_seconds and not os.path.exists(path):
            stream.write("teacher, seed %d: training or loading from %s/teachers\n" % (seed, out_dir))
            teacher_seconds[seed] = prepare_seed_teacher(seed, dataset, config_file_list, config_dict, out_dir)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                cell = json.load(handle)
            extending = bool(continue_capped and _can_continue(cell, continue_capped))
            if "settings" not in cell:
                stream.write("[%d/%d] %s, seed %d: written before cells recorded their settings; not checked\n"
                             % (number, len(todo), method, seed))
            check_cell_settings(cell.get("settings"),
                                _cell_config(method, seed, dataset, config_file_list, config_dict, out_dir)[2],
                                "comparison cell %s" % path, "remove it (and its checkpoints) to recompute it, "
                                "or use another out_dir", extending or bool(cell.get("continued_from")))
            if extending:
                stream.write("[%d/%d] %s, seed %d: ended at its cap while improving; continuing from epoch "
                             "%d to the cap %d\n" % (number, len(todo), method, seed, cell["last_epoch"] + 1,
                                                    continue_capped))
                stream.flush()
                cell = _continued(cell, run_cell(method, seed, dataset, config_file_list, config_dict, out_dir,
                                                 extend_to=continue_capped))
                _write_json_atomically(cell, path)
            else:
                stream.write("[%d/%d] %s, seed %d: done before, skipped\n" % (number, len(todo), method, seed))
            cells[(method, seed)] = cell
            _report_teacher_gap(cells, seed, stream, reported)
            continue
        stream.write("[%d/%d] %s, seed %d: %s\n" % (
            number, len(todo), method, seed,
            "testing" if method == TEACHER else "training (epochs are logged by RecBole)"))
        stream.flush()
        result = run_cell(method, seed, dataset, config_file_list, config_dict, out_dir)
        _write_json_atomically(result, path)
        cells[(method, seed)] = result
        _report_teacher_gap(cells, seed, stream, reported)
        if method == TEACHER:  # the Teacher cell prepared the seed's teacher: no pre-step after it
            teacher_seconds.setdefault(seed, result["teacher_prepare_seconds"])
        stream.write("[%d/%d] %s, seed %d: NDCG@10 %.4f (%.0f s)\n" % (
            number, len(todo), method, seed, result["test_result"].get("ndcg@10", float("nan")),
            result["train_and_test_seconds"] or result.get("test_seconds", 0)))
    summary = summarise(cells, methods, seeds)
    title = "%s, seeds %s, test mode %s" % (dataset or (config_dict or {}).get("dataset"), list(seeds),
                                           cells[(methods[0], seeds[0])]["test_mode"])
    summary["teacher_seconds_this_run"] = teacher_seconds
    paths = write_outputs(summary, cells, out_dir, title)
    warning = teacher_warning(summary["teacher_valid_tests"])
    if warning:
        getLogger().warning(warning)
    stream.write(markdown(summary, title))
    stream.write("written: %s\n" % ", ".join(p for p in paths.values() if p))
    return {"summary": summary, "paths": paths, "cells": cells}


def _report_teacher_gap(cells, seed, stream, reported):
    """Once a seed's Teacher and Student cells are both there (before its distilled cells run):
    the teacher against the student alone on validation, and the warning when it is not
    significantly better."""
    if seed in reported or (TEACHER, seed) not in cells or (STUDENT, seed) not in cells:
        return
    reported.add(seed)
    valid_tests = teacher_validation_tests(cells, (TEACHER, STUDENT), [seed])
    if not valid_tests:
        return
    test = valid_tests[0]
    stream.write("seed %d: teacher vs student alone on validation, %s: mean per-user difference %+.4f, "
                 "Wilcoxon p = %.3g\n" % (seed, test["metric"], test["mean_diff"], test["p_value"]))
    warning = teacher_warning(valid_tests)
    if warning:
        stream.write("seed %d: %s\n" % (seed, warning))
        getLogger().warning("seed %d: %s" % (seed, warning))
    stream.flush()


def _can_continue(cell, cap):
    """A trained cell the epoch cap ended while still improving, below the new cap."""
    return (cell.get("method") != TEACHER and cell.get("cap_bound") and cell.get("last_epoch") is not None
            and cell["last_epoch"] + 1 < cap)


def _continued(previous, result):
    """The continued cell: its new results, the time of both processes, where it came from."""
    result["train_and_test_seconds"] = (previous.get("train_and_test_seconds") or 0.0) + result["train_and_test_seconds"]
    result["continued_from"] = {"last_epoch": previous.get("last_epoch"), "best_epoch": previous.get("best_epoch"),
                                "ndcg@10": previous["test_result"].get("ndcg@10"),
                                "train_and_test_seconds": previous.get("train_and_test_seconds")}
    result["resumed_from"] = previous.get("resumed_from")  # the sum counts every process
    return result


def _write_json_atomically(result, path):
    """A crash while writing never leaves a half-written cell (which would count as done)."""
    atomic_write_text(path, json.dumps(result))
