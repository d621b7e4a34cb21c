"""Export a distilled student so that stock RecBole serves it without the plugin.

From a DE/RRD/DERRD checkpoint this writes, into one folder:

* ``<Backbone>-student.pth``: a RecBole checkpoint of the student backbone alone (its Config
  names e.g. ``BPR``, its ``state_dict`` loads into ``get_model('BPR')``); the teacher and the
  distillation modules are dropped.
* ``<Backbone>-student.weights.pt``: the bare state dict, loadable with
  ``torch.load(..., weights_only=True)`` (no pickled code).
* ``<Backbone>-student.yaml``: the plain RecBole settings to rebuild the backbone and its data
  split with ``Config(model=..., dataset=..., config_file_list=[yaml])``.
* with ``--vectors``: ``<Backbone>-student.vectors.npz``, the user and item vectors, id maps and
  training items as plain arrays (:mod:`recbole_derrd.serving.vectors`; needs the dataset, which
  is rebuilt from the checkpoint's settings).

Usage: ``python -m recbole_derrd.serving.export saved/DERRD-....pth --out exported/ [--vectors]``
"""

import argparse
import os

import yaml

from recbole_derrd.atomic import atomic_write_text
from recbole_derrd.checkpoints import CheckpointError, atomic_save, load_checkpoint
from recbole_derrd.config import plugin_owned_keys, samples_negatives, student_config

STUDENT_PREFIX = "student."
#: keys RecBole computes itself when it builds a Config, and those that choose devices,
#: processes or network peers (the run that reads the yaml decides them): never written.
DERIVED_KEYS = {
    "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type", "device", "single_spec", "local_rank",
    "valid_neg_sample_args", "test_neg_sample_args", "valid_metric_bigger", "data_path",
    "gpu_id", "use_gpu", "world_size", "nproc", "offset", "ip", "port", "config_file_list",
    "resume",
}


def _yaml_safe(value):
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_yaml_safe(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _yaml_safe(v) for k, v in value.items())
    return False


def plain_settings(config):
    """The backbone's settings as plain yaml values (RecBole re-derives the rest)."""
    settings = {k: v for k, v in config.final_config_dict.items()
                if k not in DERIVED_KEYS and _yaml_safe(v)}
    settings = yaml.safe_load(yaml.safe_dump(settings))  # tuples -> lists
    if "train_neg_sample_args" in settings and not samples_negatives(settings["train_neg_sample_args"]):
        settings["train_neg_sample_args"] = None  # RecBole writes a None back as a dict, and refuses that form
    if config["dataset"] != "ml-100k":  # RecBole appends the dataset name to data_path itself
        settings["data_path"] = os.path.dirname(os.path.normpath(config["data_path"]))
    return settings


def export_student(checkpoint_file, out_dir):
    """Write the three files described in the module docstring; return their paths."""
    from recbole_derrd.registration import PLUGIN_MODELS

    from recbole_derrd.backbone_support import backbone_class

    checkpoint = load_checkpoint(checkpoint_file)
    config = checkpoint.get("config")
    if config is None or config["model"] not in PLUGIN_MODELS:
        raise CheckpointError("%s is not a DE/RRD/DERRD checkpoint" % checkpoint_file)
    try:
        backbone_class(config["student_model"], "student_model")
    except ValueError as exc:
        raise CheckpointError("%s: %s" % (checkpoint_file, exc)) from exc
    state = {k[len(STUDENT_PREFIX):]: v.detach().cpu() for k, v in checkpoint["state_dict"].items()
             if k.startswith(STUDENT_PREFIX)}
    sconfig = student_config(config, plugin_owned_keys(config, PLUGIN_MODELS.values()))
    backbone = sconfig["model"]
    stem = os.path.join(out_dir, "%s-student" % backbone)
    paths = {"checkpoint": stem + ".pth", "weights": stem + ".weights.pt", "config": stem + ".yaml"}
    atomic_save({
        "config": sconfig,
        "epoch": checkpoint.get("epoch"),
        "cur_step": checkpoint.get("cur_step"),
        "best_valid_score": checkpoint.get("best_valid_score"),
        "state_dict": state,
        "other_parameter": None,
        "optimizer": None,
    }, paths["checkpoint"], pickle_protocol=4)
    atomic_save(state, paths["weights"])
    atomic_write_text(paths["config"], yaml.safe_dump(plain_settings(sconfig), sort_keys=True))
    return paths


def export_student_vectors(checkpoint_file, out_dir):
    """Write ``<Backbone>-student.vectors.npz`` for a plugin checkpoint; return its path.

    The model and its training split are rebuilt from the checkpoint (the dataset must be where
    its ``data_path`` says)."""
    from recbole_derrd.quick_start import load_data_and_model
    from recbole_derrd.serving.vectors import backbone_of, export_vectors

    _, model, _, train_data, _, _ = load_data_and_model(checkpoint_file)
    name = type(backbone_of(model)).__name__
    return export_vectors(model, train_data._dataset, os.path.join(out_dir, "%s-student.vectors.npz" % name))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a DE, RRD or DERRD checkpoint saved by RecBole")
    parser.add_argument("--out", default="exported", help="output folder (default: exported)")
    parser.add_argument("--vectors", action="store_true",
                        help="also write the student's vectors and id maps (.npz) for numpy or a vector index")
    parser.add_argument("--debug", action="store_true", help="on an error, show the full traceback")
    args = parser.parse_args(argv)
    import recbole_derrd  # noqa: F401  (registers the models whose checkpoint is read)
    from recbole_derrd.cli_errors import run_reporting_user_errors

    def run():
        paths = export_student(args.checkpoint, args.out)
        if args.vectors:
            paths["vectors"] = export_student_vectors(args.checkpoint, args.out)
        for kind, path in paths.items():
            print("%-10s %s" % (kind, path))

    run_reporting_user_errors(run, prog="recbole-derrd-export", debug=args.debug)


if __name__ == "__main__":
    main()
