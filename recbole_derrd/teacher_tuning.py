"""A teacher worth distilling: its recipe tuned on validation before the student learns from it.

The plugin trains the teacher with the student's recipe plus ``t_`` overrides, and that recipe
is often not what a large model needs (a teacher barely better than the student alone has
nothing to teach).  With ``tune_teacher: N`` (N candidates; ``True`` means
:data:`DEFAULT_BUDGET`) the teacher is chosen by a budgeted axis search on the validation metric:

1. candidate 1 is the teacher as configured;
2. then, for each key of the grid in file order, each of its values is tried with the other
   keys at the best values found so far; a candidate that beats the best becomes it;
3. the search stops after N candidates (each distinct setting is trained once).

Every candidate is a normal cached teacher (its own cache key, its own lock, resumable
training), so an interrupted search resumes where it stopped and a repeated one (another seed
of the student, a HyperTuning trial) trains nothing.  The test split is never used.  The
search's table (``<Model>-<dataset>-<key>.search.md`` and ``.json``) is written beside the
teacher cache.

Grids are yaml files ``key: [values]`` over the teacher's training keys and its backbone's own
non-size keys (shipped: ``properties/tuning/teacher_<Backbone>.yaml``; ``teacher_grid_file``
chooses another).  Keys that change the teacher's size or the data are refused: the student's
distillation modules are built for the configured teacher size.
"""

import hashlib
import json
import os
from logging import getLogger

import torch
import yaml
from recbole.utils import get_model

from recbole_derrd.atomic import atomic_write_text
from recbole_derrd.config import backbone_config, properties_dir, stock_model_yaml
from recbole_derrd.harness.tables import markdown_table

DEFAULT_BUDGET = 8
#: training keys a grid may set besides the backbone's own (non-size) keys.
TUNABLE_TRAINING_KEYS = ("learning_rate", "weight_decay", "train_neg_sample_args", "learner",
                         "train_batch_size", "epochs", "stopping_step", "clip_grad_norm")


def tuning_budget(config):
    """The number of candidates ``tune_teacher`` asks for (0: no search)."""
    value = config["tune_teacher"] if "tune_teacher" in config else 0
    if value is None or value is False:
        return 0
    if value is True:
        return DEFAULT_BUDGET
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("tune_teacher=%r must be True, False or a number of candidates (>= 0)" % (value,))
    return value


class TuningPlan:
    """What ``tune_teacher`` asks for: the budget, and the grid with the file it came from."""

    def __init__(self, budget, grid_path, grid):
        self.budget, self.grid_path, self.grid = budget, grid_path, grid


def tuning_plan(config):
    """The checked :class:`TuningPlan` of ``config``, None without a search: the grid is read
    and checked and a conflict with a given ``teacher_checkpoint`` refused (called when the
    Config is built and again before tuning)."""
    budget = tuning_budget(config)
    if not budget:
        return None
    if config["teacher_checkpoint"]:
        raise ValueError("tune_teacher=%r needs a teacher the plugin trains, but teacher_checkpoint=%s "
                         "is given: set one of them" % (config["tune_teacher"], config["teacher_checkpoint"]))
    path = grid_file(config)
    return TuningPlan(budget, path, read_grid(path, config["teacher_model"]))


def grid_file(config):
    """The grid of ``teacher_grid_file``, else the shipped one of the teacher's backbone."""
    given = config["teacher_grid_file"] if "teacher_grid_file" in config else None
    if given:
        return given
    name = config["teacher_model"]
    path = os.path.join(properties_dir(), "tuning", "teacher_%s.yaml" % name)
    if not os.path.isfile(path):
        raise ValueError("tune_teacher: no grid ships for teacher_model=%s; give one with teacher_grid_file "
                         "(a yaml file of 'key: [values]')" % name)
    return path


def read_grid(path, teacher_model):
    """{key: [values]} of a grid file, checked (file order kept)."""
    if not os.path.isfile(path):
        raise FileNotFoundError("teacher_grid_file %s does not exist" % path)
    with open(path, encoding="utf-8") as handle:
        try:
            grid = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            raise ValueError("teacher_grid_file %s is not valid yaml: %s" % (path, exc)) from None
    if not isinstance(grid, dict) or not grid:
        raise ValueError("teacher_grid_file %s must map keys to lists of values" % path)
    allowed = set(TUNABLE_TRAINING_KEYS) | {k for k in stock_model_yaml(teacher_model) if not _sizes(k)}
    for key, values in grid.items():
        if _sizes(key) or key not in allowed:
            raise ValueError("teacher_grid_file %s: key %r cannot be tuned for %s (tunable: %s; sizes are "
                             "fixed by t_ keys)" % (path, key, teacher_model, ", ".join(sorted(allowed))))
        if not isinstance(values, list) or not values:
            raise ValueError("teacher_grid_file %s: %s must be a non-empty list of values" % (path, key))
    return grid


def _sizes(key):
    """Keys a grid may not set: sizes (the distillation modules are built for the configured
    teacher) and file paths (pretrained weights)."""
    return key.endswith(("_size", "_sizes", "_path")) or key == "use_pretrain"


def candidate_config(model, overrides):
    """The teacher Config of one candidate: the configured teacher with ``overrides`` applied."""
    settings = dict(model.teacher_config.final_config_dict)
    settings.update(overrides)
    return backbone_config(model.config, model.teacher_config["model"], settings)


def _label(overrides, base=None):
    """``key=value, ...``; a dict value shows only its entries that differ from ``base``'s."""
    parts = []
    for key, value in overrides.items():
        known = (base or {}).get(key)
        if isinstance(value, dict) and isinstance(known, dict):
            parts += ["%s.%s=%s" % (key, k, json.dumps(v)) for k, v in value.items() if known.get(k) != v]
        else:
            parts.append("%s=%s" % (key, json.dumps(value)))
    return ", ".join(parts) or "as configured"


def tune_teacher(model, train_data, valid_data, fingerprint, plan, show_progress=False):
    """Run the search of ``plan`` (a :class:`TuningPlan`; module docstring), install the best
    teacher in ``model``; return its best checkpoint (with ``derrd_search``: the table's path)."""
    from recbole_derrd.teacher import cache_description, cache_key, cache_path, cached_or_trained_teacher

    logger = getLogger()
    config = model.config
    name = model.teacher_config["model"]
    budget, path, grid = plan.budget, plan.grid_path, plan.grid
    bigger = model.teacher_config["valid_metric_bigger"]
    base_settings = dict(model.teacher_config.final_config_dict)
    rows = []

    def evaluate(overrides):
        tconfig = candidate_config(model, overrides)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config["seed"])
            teacher = get_model(name)(tconfig, train_data._dataset).to(config["device"])
        checkpoint, entry, source = cached_or_trained_teacher(teacher, config, tconfig, fingerprint,
                                                             train_data, valid_data, show_progress)
        score, label = checkpoint.get("best_valid_score"), _label(overrides, base_settings)
        rows.append({"candidate": len(rows) + 1, "settings": label, "overrides": overrides,
                     "valid_score": score, "epoch": checkpoint.get("epoch"), "source": source,
                     "train_seconds": checkpoint.get("derrd_train_seconds"), "cache_file": entry})
        logger.info("Teacher candidate %d of at most %d (%s): validation %s %s (%s)" % (
            len(rows), budget, label, tconfig["valid_metric"], score, source))
        return score, teacher, tconfig, checkpoint

    trials = axis_search(grid, budget, evaluate, bigger)
    _, teacher, tconfig, checkpoint = trials.best_result
    chosen = next(r for r in rows if r["overrides"] == trials.best_overrides)
    base = cache_description(model.teacher_config, fingerprint)
    search_key = hashlib.sha256(json.dumps([cache_key(base), grid, budget], sort_keys=True, default=str)
                                .encode("utf-8")).hexdigest()
    stem = os.path.splitext(cache_path(config, model.teacher_config, search_key))[0] + ".search"
    _write_table(stem, rows, chosen["candidate"], name, model.teacher_config, path, budget)
    logger.info("Teacher tuned on validation: candidate %d of %d chosen (%s), table %s.md"
                % (chosen["candidate"], len(rows), chosen["settings"], stem))
    model.use_teacher(teacher, tconfig)
    checkpoint["derrd_search"] = stem + ".md"
    return checkpoint


class SearchResult:
    """What :func:`axis_search` found: every evaluated override set in order, and the best."""

    def __init__(self):
        self.evaluated = []  # [(overrides, score)]
        self.best_overrides = None
        self.best_score = None
        self.best_result = None


def axis_search(grid, budget, evaluate, bigger=True):
    """Budgeted axis search: ``{}`` first, then each grid value of each key in order, merged
    with the best overrides so far; a setting already evaluated is skipped (not counted).

    ``evaluate(overrides)`` returns the validation score, or a tuple whose first item is it.
    """
    result, seen = SearchResult(), set()
    steps = [{}] + [{key: value} for key, values in grid.items() for value in values]
    for step in steps:
        if len(result.evaluated) >= budget:
            break
        overrides = dict(result.best_overrides or {}, **step)
        key = json.dumps(overrides, sort_keys=True, default=str)
        if key in seen:
            continue
        seen.add(key)
        outcome = evaluate(overrides)
        score = outcome[0] if isinstance(outcome, tuple) else outcome
        result.evaluated.append((overrides, score))
        if result.best_score is None or (score > result.best_score if bigger else score < result.best_score):
            result.best_overrides, result.best_score, result.best_result = overrides, score, outcome
    return result


def _write_table(stem, rows, chosen, name, tconfig, grid_path, budget):
    from recbole_derrd.distributed import is_main_process

    if not is_main_process():
        return
    metric = tconfig["valid_metric"]
    header = ["candidate", "settings", "validation %s" % metric, "best epoch", "train time (s)", "this run"]
    body = [["%d%s" % (r["candidate"], " (chosen)" if r["candidate"] == chosen else ""), r["settings"],
             "%.4f" % r["valid_score"] if isinstance(r["valid_score"], (int, float)) else "unknown",
             str(r["epoch"]), "%.0f" % r["train_seconds"] if r["train_seconds"] else "unknown", r["source"]]
            for r in rows]
    text = "\n".join([
        "# Teacher search: %s on %s" % (name, tconfig["dataset"]), "",
        "Axis search on validation %s, at most %d candidates, grid %s. Candidate 1 is the teacher as "
        "configured; the test split is never used. Train time: when the candidate was trained (a "
        "cached one keeps its original time); this run: trained now or read from the cache." % (metric, budget, grid_path), "",
        markdown_table(header, body), ""])
    atomic_write_text(stem + ".md", text)
    atomic_write_text(stem + ".json", json.dumps({"chosen": chosen, "budget": budget, "grid_file": grid_path,
                                                  "candidates": rows}, indent=2, sort_keys=True, default=str))
