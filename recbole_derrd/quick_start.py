"""Entry points: RecBole's quick-start flow made torch-2.6-safe, and the side-by-side run.

* :func:`run_recbole` — RecBole's ``run_recbole`` for any model (stock or plugin), with the
  plugin's checkpoint loader, returning per-user test metrics too.
* :func:`run_side_by_side` — teacher, student trained alone and a distilled student on one
  split, with the same test negatives, printed as one table with a paired significance test.
* :func:`load_data_and_model` — RecBole's function of that name, reading the checkpoint
  through :func:`recbole_derrd.checkpoints.load_checkpoint`.
"""

import sys
from logging import getLogger

from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.transform import construct_transform
from recbole.utils import get_flops, get_model, get_trainer, init_logger, init_seed, set_color

import recbole_derrd  # noqa: F401  (registration)
from recbole_derrd.checkpoints import load_checkpoint
from recbole_derrd.config import student_config, plugin_owned_keys
from recbole_derrd.evaluation import (PAIRED_METRICS, comparable_test, over_seeds, paired_test,
                                      per_user_over_seeds)
from recbole_derrd.registration import PLUGIN_MODELS
from recbole_derrd.teacher import interactions_digest
from recbole_derrd.trainer import safe_trainer_class


def _prepare(model, dataset, config_file_list, config_dict):
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict)
    return (config,) + load_data(config)


def load_data(config):
    """RecBole's start of a run for a built ``config``: seed, logger, (dataset, train, valid, test)."""
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    data = create_dataset(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
    return data, train_data, valid_data, test_data


def _train_and_test(config, data, train_data, valid_data, test_data, saved=True):
    """RecBole's own model/trainer flow; returns (result dict, model, per-user metrics)."""
    logger = getLogger()
    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    # A loader reused from an earlier training in this process (run_side_by_side trains the
    # distilled student, then the student alone, on one loader) has advanced its shuffling
    # generator by that training's epochs: restart it, so every model sees the batches of a
    # fresh run and one row does not depend on how long another trained.
    if getattr(train_data, "generator", None) is not None:
        train_data.generator.manual_seed(config["seed"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)
    flops = get_flops(model, data, config["device"], logger, construct_transform(config))
    logger.info(set_color("FLOPs", "blue") + f": {flops}")
    trainer = safe_trainer_class(get_trainer(config["MODEL_TYPE"], config["model"]))(config, model)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"])
    test_result, per_user = comparable_test(trainer, test_data, load_best_model=saved,
                                            show_progress=config["show_progress"])
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    result = {
        "model": config["model"],
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "parameters": sum(p.numel() for p in model.parameters()),
        "saved_model_file": trainer.saved_model_file if saved else None,
    }
    return result, model, per_user


def run_recbole(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True):
    """RecBole's ``run_recbole`` (same arguments and result) with safe checkpoint loading."""
    config, data, train_data, valid_data, test_data = _prepare(
        model, dataset, config_file_list, config_dict)
    result, _, per_user = _train_and_test(config, data, train_data, valid_data, test_data, saved)
    result["per_user"] = per_user
    return result


def _teacher_row(distilled, config, test_data):
    trainer = safe_trainer_class(get_trainer(distilled.teacher_config["MODEL_TYPE"],
                                             distilled.teacher_config["model"]))(
        distilled.teacher_config, distilled.teacher)
    result, per_user = comparable_test(trainer, test_data, load_best_model=False)
    return {"model": "Teacher (%s)" % _backbone_label(distilled.teacher_adapter),
            "test_result": result,
            "parameters": sum(p.numel() for p in distilled.teacher.parameters())}, per_user


def _backbone_label(adapter):
    """e.g. ``BPR-200``: the backbone and the size of its user representation."""
    return "%s-%d" % (type(adapter.model).__name__, adapter.user_dim)


def format_table(rows, metrics):
    head = "| method | params | " + " | ".join(m.upper().replace("HIT", "H").replace("NDCG", "N")
                                                .replace("MRR", "M") for m in metrics) + " |"
    lines = [head, "|" + " --- |" * (len(metrics) + 2)]
    for row in rows:
        values = " | ".join("%.4f" % row["test_result"][m] for m in metrics)
        lines.append("| %s | %s | %s |" % (row["model"], format(row["parameters"], ","), values))
    return "\n".join(lines)


def run_side_by_side(model="DERRD", dataset=None, config_file_list=None, config_dict=None,
                     saved=True, export_dir=None, stream=None):
    """Teacher, student alone and ``model`` (DE, RRD or DERRD) on one split, side by side.

    All three are tested on the same split with the same sampled negatives (re-seeded before
    each test pass); the distilled student is compared with the student trained alone by a
    per-user Wilcoxon signed-rank test.  Returns a dict with every row and the tests.
    """
    from recbole_derrd.export import export_student

    stream = stream or sys.stdout
    if model not in PLUGIN_MODELS:
        raise ValueError("run_side_by_side needs a plugin model (%s), got %r"
                         % (", ".join(PLUGIN_MODELS), model))
    config, data, train_data, valid_data, test_data = _prepare(
        model, dataset, config_file_list, config_dict)
    logger = getLogger()

    distilled_row, distilled, distilled_users = _train_and_test(
        config, data, train_data, valid_data, test_data, saved)
    student_label = _backbone_label(distilled.student_adapter)
    distilled_row["model"] = "%s (%s)" % (model, student_label)
    distilled_row["parameters"] = sum(p.numel() for p in distilled.student.parameters())
    teacher_row, teacher_users = _teacher_row(distilled, config, test_data)

    sconfig = student_config(config, plugin_owned_keys(config, PLUGIN_MODELS.values()))
    student_row, _, student_users = _train_and_test(
        sconfig, data, train_data, valid_data, test_data, saved)
    student_row["model"] = "Student alone (%s)" % student_label

    rows = [teacher_row, student_row, distilled_row]
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
    if exported:
        lines.append("Exported student: %s" % ", ".join(exported.values()))
    stream.write("\n".join(lines) + "\n")
    logger.info("\n".join(lines))
    return {"rows": rows, "paired_tests": tests, "teacher_tests": teacher_tests,
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
             "| method | params | " + " | ".join(metrics) + " |", "|" + " --- |" * (len(metrics) + 2)]
    for row in summary:
        lines.append("| %s | %s | %s |" % (row["model"], format(row["parameters"], ","), " | ".join(
            "%.4f +- %.4f" % (row["mean"][m], row["std"][m]) for m in metrics)))
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


def load_data_and_model(model_file):
    """RecBole's ``load_data_and_model``, reading the checkpoint with the plugin's loader.

    The Config is rebuilt, not taken from the file: a fresh ``Config`` for the checkpoint's
    model and dataset, fed (through a yaml file, so RecBole never evaluates a string from the
    checkpoint) with the checkpoint's plain settings: dataset, split, evaluation and model
    keys.  Device, GPU, distributed and path-of-run keys (``gpu_id``, ``world_size``, ``ip``,
    ``config_file_list``, ...) are this process's, never the file's.
    """
    import os
    import tempfile

    import yaml

    from recbole_derrd.checkpoints import CheckpointError
    from recbole_derrd.export import plain_settings
    from recbole_derrd.safe_unpickle import model_classes

    checkpoint = load_checkpoint(model_file)
    saved = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, Config):
        raise CheckpointError("checkpoint %s holds no RecBole Config" % model_file)
    model_name, dataset = saved["model"], saved["dataset"]
    if model_name not in {cls.__name__ for cls in model_classes()}:
        raise CheckpointError("checkpoint %s names an unknown model %r" % (model_file, model_name))
    if not isinstance(dataset, str) or not dataset or os.sep in dataset or dataset.startswith("."):
        raise CheckpointError("checkpoint %s names an invalid dataset %r" % (model_file, dataset))
    handle, settings_file = tempfile.mkstemp(prefix="recbole-derrd-", suffix=".yaml")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            yaml.safe_dump(plain_settings(saved), stream)
        config = Config(model=model_name, dataset=dataset, config_file_list=[settings_file])
    finally:
        os.remove(settings_file)
    data, train_data, valid_data, test_data = load_data(config)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    from recbole_derrd.trainer import load_model_state

    load_model_state(model, checkpoint, model_file)
    return config, model, data, train_data, valid_data, test_data
