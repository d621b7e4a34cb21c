"""Entry points mirroring RecBole's quick start, made torch-2.6-safe.

* :func:`run_recbole` — RecBole's ``run_recbole`` for any model (stock or plugin), with the
  plugin's checkpoint loader, returning per-user test metrics too.
* :func:`load_data` / :func:`train_and_test` — its two halves, which the harness
  (:mod:`recbole_derrd.harness`) builds on.
* :func:`load_data_and_model` — RecBole's function of that name, reading the checkpoint
  through :func:`recbole_derrd.checkpoints.load_checkpoint`.

The side-by-side and multi-seed runs live in :mod:`recbole_derrd.harness.side_by_side`.
"""

import sys
from logging import getLogger

from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.data.transform import construct_transform
from recbole.utils import get_flops, get_model, init_logger, init_seed, set_color

import recbole_derrd  # noqa: F401  (registration)
from recbole_derrd.backbone_support import model_size
from recbole_derrd.checkpoints import load_checkpoint
from recbole_derrd.evaluation import comparable_test
from recbole_derrd.numerics import flush_denormals
from recbole_derrd.trainer import safe_trainer


def prepare(model, dataset, config_file_list, config_dict):
    """(config, dataset, train, valid, test) for a model name and RecBole's usual arguments."""
    config = Config(model=model, dataset=dataset, config_file_list=config_file_list,
                    config_dict=config_dict)
    return (config,) + load_data(config)


def load_data(config):
    """RecBole's start of a run for a built ``config``: seed, logger, (dataset, train, valid, test)."""
    init_seed(config["seed"], config["reproducibility"])
    # before the first parallel operation, so that torch's worker threads inherit the flags
    flush_denormals(config)
    init_logger(config)
    logger = getLogger()
    logger.info(sys.argv)
    logger.info(config)
    data = create_dataset(config)
    logger.info(data)
    train_data, valid_data, test_data = data_preparation(config, data)
    return data, train_data, valid_data, test_data


def train_and_test(config, data, train_data, valid_data, test_data, saved=True):
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
    trainer = safe_trainer(config, model)
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
        "parameters": model_size(getattr(model, "student", model)),
        "saved_model_file": trainer.saved_model_file if saved else None,
        "cap_bound": trainer.cap_bound,
        # time to quality: training (setup included) until the best evaluation / the last one
        "seconds_to_best": trainer.seconds_to_best,
        "fit_seconds": trainer.fit_seconds,
        # training cost: mean seconds of one training epoch (evaluations excluded)
        "seconds_per_epoch": trainer.seconds_per_epoch,
        # [epoch, validation score, seconds] per evaluation
        "valid_curve": list(trainer.valid_curve),
    }
    return result, model, per_user


def run_recbole(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True):
    """RecBole's ``run_recbole`` (same arguments and result) with safe checkpoint loading."""
    config, data, train_data, valid_data, test_data = prepare(
        model, dataset, config_file_list, config_dict)
    result, _, per_user = train_and_test(config, data, train_data, valid_data, test_data, saved)
    result["per_user"] = per_user
    return result


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
    from recbole_derrd.serving.export import plain_settings
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
