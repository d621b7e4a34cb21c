"""Teacher, student alone and a distilled student on one split, side by side (the main job).

All rows are tested on the same split with the same sampled negatives (re-seeded before each
test pass); the distilled student is compared with the student trained alone, and the teacher
with the student alone, by per-user Wilcoxon signed-rank tests.  :func:`run_seeds` repeats it
per seed and adds mean +- std and a pooled test.
"""

import sys
from logging import getLogger

from recbole_derrd.backbone_support import model_size
from recbole_derrd.config import plugin_owned_keys, student_config
from recbole_derrd.evaluation import (PAIRED_METRICS, comparable_test, over_seeds, paired_test,
                                      per_user_over_seeds)
from recbole_derrd.harness.tables import markdown_table
from recbole_derrd.quick_start import prepare, train_and_test
from recbole_derrd.registration import PLUGIN_MODELS
from recbole_derrd.teacher import interactions_digest
from recbole_derrd.trainer import safe_trainer


def teacher_row(distilled, config, test_data):
    trainer = safe_trainer(distilled.teacher_config, distilled.teacher)
    result, per_user = comparable_test(trainer, test_data, load_best_model=False)
    return {"model": "Teacher (%s)" % backbone_label(distilled.teacher_adapter),
            "test_result": result,
            "parameters": model_size(distilled.teacher)}, per_user


def teacher_gap_on_validation(distilled, student, student_config, valid_data):
    """Per-user tests of the teacher against the student alone on validation (same negatives).

    A teacher that is not clearly better than its student has little to transfer; the test
    uses validation only, so it can guide tuning the teacher without looking at test."""
    teacher_users = validation_per_user(distilled.teacher_config, distilled.teacher, valid_data)
    student_users = validation_per_user(student_config, student, valid_data)
    return [paired_test(student_users, teacher_users, m) for m in PAIRED_METRICS if m in student_users]


def validation_per_user(config, model, valid_data):
    """Per-user validation metrics of ``model`` as it is (re-seeded: the same negatives for the
    teacher and the student alone under sampled evaluation)."""
    return comparable_test(safe_trainer(config, model), valid_data, load_best_model=False)[1]


def teacher_clearly_better(test, alpha=0.05):
    """The teacher's mean per-user gain is positive and significant at ``alpha``."""
    return test["mean_diff"] > 0 and test["p_value"] < alpha


def teacher_gap_warning(test):
    """The one-line warning for a validation test of the teacher against the student alone that
    is not :func:`teacher_clearly_better` (None when it is)."""
    if teacher_clearly_better(test):
        return None
    return ("Warning: the teacher is not significantly better than the student alone on validation "
            "(%s per user %+.4f, Wilcoxon p = %.3g): distillation has little to transfer; tune the "
            "teacher (tune_teacher)." % (test["metric"], test["mean_diff"], test["p_value"]))


def backbone_label(adapter):
    """e.g. ``BPR-200``: the backbone and the size of its user representation (the name alone
    for a score-only model, e.g. ``ItemKNN``)."""
    name = type(adapter.model).__name__
    return name if adapter.user_dim is None else "%s-%d" % (name, adapter.user_dim)


def format_table(rows, metrics):
    """The side-by-side table: method, parameters, one column per metric (H/M/N@k)."""
    header = ["method", "params"] + [m.upper().replace("HIT", "H").replace("NDCG", "N").replace("MRR", "M")
                                     for m in metrics]
    return markdown_table(header, [[row["model"], format(row["parameters"], ",")]
                                   + ["%.4f" % row["test_result"][m] for m in metrics] for row in rows])


def run_side_by_side(model="DERRD", dataset=None, config_file_list=None, config_dict=None,
                     saved=True, export_dir=None, stream=None):
    """Teacher, student alone and ``model`` (DE, RRD or DERRD) on one split, side by side.

    All three are tested on the same split with the same sampled negatives (re-seeded before
    each test pass); the distilled student is compared with the student trained alone by a
    per-user Wilcoxon signed-rank test.  Returns a dict with every row and the tests.
    """
    from recbole_derrd.serving.export import export_student

    stream = stream or sys.stdout
    if model not in PLUGIN_MODELS:
        raise ValueError("run_side_by_side needs a plugin model (%s), got %r"
                         % (", ".join(PLUGIN_MODELS), model))
    config, data, train_data, valid_data, test_data = prepare(
        model, dataset, config_file_list, config_dict)
    logger = getLogger()

    distilled_row, distilled, distilled_users = train_and_test(
        config, data, train_data, valid_data, test_data, saved)
    student_label = backbone_label(distilled.student_adapter)
    distilled_row["model"] = "%s (%s)" % (model, student_label)
    distilled_row["parameters"] = model_size(distilled.student)
    teacher_result, teacher_users = teacher_row(distilled, config, test_data)

    sconfig = student_config(config, plugin_owned_keys(config, PLUGIN_MODELS.values()))
    student_row, student, student_users = train_and_test(
        sconfig, data, train_data, valid_data, test_data, saved)
    student_row["model"] = "Student alone (%s)" % student_label
    teacher_gap = teacher_gap_on_validation(distilled, student, sconfig, valid_data)

    rows = [teacher_result, student_row, distilled_row]
    metrics = list(distilled_row["test_result"])
    tests = [paired_test(student_users, distilled_users, m) for m in PAIRED_METRICS
             if m in student_users]
    teacher_tests = [paired_test(student_users, teacher_users, m) for m in PAIRED_METRICS
                     if m in student_users]
    exported = None
    if saved and export_dir:
        exported = export_student(distilled_row["saved_model_file"], export_dir)

    mode = config["eval_args"]["mode"]["test"]
    lines = ["", "Test results on %s (test mode: %s, seed %s; same split and negatives for all rows)"
             % (config["dataset"], mode, config["seed"]), format_table(rows, metrics), ""]
    for label, group in (("%s vs student alone" % model, tests), ("Teacher vs student alone", teacher_tests)):
        for t in group:
            lines.append("%s, %s: mean per-user difference %+.4f, Wilcoxon signed-rank p = %.3g (%d users)"
                         % (label, t["metric"], t["mean_diff"], t["p_value"], t["n_users"]))
    gap = teacher_gap[0]
    lines.append("Teacher vs student alone on validation, %s: mean per-user difference %+.4f, "
                 "Wilcoxon signed-rank p = %.3g (%d users)"
                 % (gap["metric"], gap["mean_diff"], gap["p_value"], gap["n_users"]))
    warning = teacher_gap_warning(gap)
    if warning:
        lines.append(warning)
    if exported:
        lines.append("Exported student: %s" % ", ".join(exported.values()))
    stream.write("\n".join(lines) + "\n")
    logger.info("\n".join(lines))
    return {"rows": rows, "paired_tests": tests, "teacher_tests": teacher_tests,
            "teacher_valid_tests": teacher_gap,
            "per_user": {"teacher": teacher_users, "student": student_users, model: distilled_users},
            "exported": exported, "config": config, "test_split": interactions_digest(test_data._dataset)}


def run_seeds(model="DERRD", dataset=None, config_file_list=None, seeds=(0, 1, 2),
              config_dict=None, saved=True, stream=None):
    """:func:`run_side_by_side` once per seed, then mean +- std over seeds.

    When every seed tested on the same split (e.g. a time-ordered leave-one-out), the per-user
    metrics are averaged over seeds and the distilled student is tested against the student
    alone on those averages (Wilcoxon signed-rank); otherwise only per-seed tests are reported.
    """
    stream = stream or sys.stdout
    reports = [run_side_by_side(model, dataset, config_file_list, dict(config_dict or {}, seed=seed),
                                saved=saved, stream=stream) for seed in seeds]
    metrics = list(reports[0]["rows"][0]["test_result"])
    summary = []
    for index, row in enumerate(reports[0]["rows"]):
        summary.append(dict(over_seeds([r["rows"][index]["test_result"] for r in reports], metrics),
                            model=row["model"], parameters=row["parameters"]))
    lines = ["", "Mean +- std over seeds %s on %s" % (list(seeds), reports[0]["config"]["dataset"]),
             markdown_table(["method", "params"] + metrics,
                            [[row["model"], format(row["parameters"], ",")]
                             + ["%.4f +- %.4f" % (row["mean"][m], row["std"][m]) for m in metrics]
                             for row in summary])]
    for seed, report in zip(seeds, reports):
        for t in report["paired_tests"]:
            lines.append("seed %s: %s vs student alone, %s: %+.4f, p = %.3g"
                         % (seed, model, t["metric"], t["mean_diff"], t["p_value"]))
    pooled = []
    if len({r["test_split"] for r in reports}) == 1:
        average = {name: per_user_over_seeds([r["per_user"][name] for r in reports])
                   for name in ("student", model)}
        pooled = [paired_test(average["student"], average[model], m) for m in PAIRED_METRICS]
        for t in pooled:
            lines.append("all seeds (per-user mean over seeds, same split): %s vs student alone, %s: "
                         "%+.4f, Wilcoxon p = %.3g (%d users)"
                         % (model, t["metric"], t["mean_diff"], t["p_value"], t["n_users"]))
    else:
        lines.append("the seeds tested on different splits: no pooled per-user test")
    stream.write("\n".join(lines) + "\n")
    getLogger().info("\n".join(lines))
    return {"summary": summary, "reports": reports, "pooled_tests": pooled}
