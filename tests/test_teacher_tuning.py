"""Teacher tuning on validation: the axis search, the grid checks and a real tuned run."""

import glob
import json
import os

import pytest
import torch
from recbole.config import Config

from recbole_derrd.checkpoints import load_checkpoint
from recbole_derrd.quick_start import run_recbole
from recbole_derrd.teacher_tuning import DEFAULT_BUDGET, axis_search, read_grid, tuning_budget


def test_axis_search_order_merging_and_budget():
    grid = {"lr": [1, 2, 3], "wd": [10, 20]}
    scores = {(): 0.5, ("lr", 1): 0.4, ("lr", 2): 0.7, ("lr", 3): 0.6,
              ("lr", 2, "wd", 10): 0.9, ("lr", 2, "wd", 20): 0.8, ("lr", 1, "wd", 10): 0.45,
              ("lr", 1, "wd", 20): 0.41}

    def evaluate(overrides):
        return scores[tuple(x for kv in sorted(overrides.items()) for x in kv)]

    result = axis_search(grid, 10, evaluate)
    assert [o for o, _ in result.evaluated] == [{}, {"lr": 1}, {"lr": 2}, {"lr": 3}, {"lr": 2, "wd": 10},
                                                {"lr": 2, "wd": 20}]
    assert result.best_overrides == {"lr": 2, "wd": 10} and result.best_score == 0.9
    # a budget of 4 stops before the second axis
    result = axis_search(grid, 4, evaluate)
    assert len(result.evaluated) == 4 and result.best_overrides == {"lr": 2}
    # smaller is better (e.g. a loss): lr=1 wins the first axis and neither wd beats it
    result = axis_search(grid, 10, evaluate, bigger=False)
    assert [o for o, _ in result.evaluated][-2:] == [{"lr": 1, "wd": 10}, {"lr": 1, "wd": 20}]
    assert result.best_overrides == {"lr": 1} and result.best_score == 0.4


def test_axis_search_skips_a_setting_it_has_seen():
    seen = []

    def evaluate(overrides):
        seen.append(dict(overrides))
        return {"lr": 1.0}.get("lr") if overrides == {"lr": 1} else 0.0

    # lr=1 wins; the grid's second lr=1 would repeat it: skipped, not counted
    result = axis_search({"lr": [1, 1, 2]}, 3, evaluate)
    assert seen == [{}, {"lr": 1}, {"lr": 2}] and len(result.evaluated) == 3


def test_tuning_budget_values():
    assert tuning_budget({"tune_teacher": True}) == DEFAULT_BUDGET == 8
    assert tuning_budget({"tune_teacher": False}) == tuning_budget({"tune_teacher": 0}) == 0
    assert tuning_budget({"tune_teacher": 3}) == 3
    for bad in (-1, 2.5, "many"):
        with pytest.raises(ValueError, match="tune_teacher=.* must be True, False or a number"):
            tuning_budget({"tune_teacher": bad})


def test_grid_files_are_checked(tmp_path):
    def grid(text):
        path = tmp_path / "grid.yaml"
        path.write_text(text)
        return str(path)

    assert list(read_grid(grid("learning_rate: [0.1, 0.01]\nn_layers: [1, 3]\n"), "LightGCN")) == [
        "learning_rate", "n_layers"]
    with pytest.raises(ValueError, match="key 'embedding_size' cannot be tuned for BPR"):
        read_grid(grid("embedding_size: [10, 20]\n"), "BPR")
    with pytest.raises(ValueError, match="key 'mlp_hidden_size' cannot be tuned for NeuMF"):
        read_grid(grid("mlp_hidden_size: [[64]]\n"), "NeuMF")
    with pytest.raises(ValueError, match="key 'lerning_rate' cannot be tuned"):
        read_grid(grid("lerning_rate: [0.1]\n"), "BPR")
    with pytest.raises(ValueError, match="learning_rate must be a non-empty list"):
        read_grid(grid("learning_rate: 0.1\n"), "BPR")
    with pytest.raises(ValueError, match="is not valid yaml"):
        read_grid(grid("learning_rate: [0.1\n"), "BPR")
    with pytest.raises(FileNotFoundError, match="teacher_grid_file .*missing.yaml does not exist"):
        read_grid(str(tmp_path / "missing.yaml"), "BPR")


def test_shipped_grids_are_valid():
    from recbole_derrd.config import properties_dir

    for name in ("BPR", "LightGCN", "NeuMF"):
        grid = read_grid(os.path.join(properties_dir(), "tuning", "teacher_%s.yaml" % name), name)
        # every backbone's search covers the optimiser's two knobs (issue 19)
        assert {"learning_rate", "weight_decay"} <= set(grid), name


def test_tuning_conflicts_with_a_given_teacher(tiny):
    with pytest.raises(ValueError, match="tune_teacher=3 needs a teacher the plugin trains"):
        Config(model="DERRD", config_dict=dict(tiny, tune_teacher=3, teacher_checkpoint="some.pth"))


def test_tuned_run_chooses_the_best_candidate_and_a_rerun_trains_nothing(tiny, workdir):
    grid = workdir / "grid.yaml"
    grid.write_text("learning_rate: [0.05, 0.0001]\n")
    settings = dict(tiny, tune_teacher=3, teacher_grid_file=str(grid), model="RRD")
    result = run_recbole("RRD", config_dict=dict(settings))
    cache = os.path.join(tiny["checkpoint_dir"], "teachers")
    tables = glob.glob(os.path.join(cache, "*.search.json"))
    assert len(tables) == 1 and os.path.isfile(tables[0][:-len(".json")] + ".md")
    search = json.load(open(tables[0]))
    candidates = search["candidates"]
    assert [c["settings"] for c in candidates] == ["as configured", "learning_rate=0.05", "learning_rate=0.0001"]
    assert {c["source"] for c in candidates} == {"trained"}
    scores = [c["valid_score"] for c in candidates]
    chosen = candidates[search["chosen"] - 1]
    assert chosen["valid_score"] == max(scores)
    assert len({c["cache_file"] for c in candidates}) == 3  # each candidate under its own key
    # the run's teacher is the chosen candidate's cached teacher
    cached = load_checkpoint(chosen["cache_file"])
    assert cached["best_valid_score"] == chosen["valid_score"]
    assert cached["config"]["learning_rate"] == {"as configured": tiny.get("learning_rate", 0.001),
                                                 "learning_rate=0.05": 0.05,
                                                 "learning_rate=0.0001": 0.0001}[chosen["settings"]]
    assert result["best_valid_score"] is not None

    again = run_recbole("RRD", config_dict=dict(settings))
    search = json.load(open(tables[0]))
    assert {c["source"] for c in search["candidates"]} == {"cache"}
    assert [c["valid_score"] for c in search["candidates"]] == scores
    assert again["test_result"] == result["test_result"]


def test_use_teacher_rebinds_the_terms(tiny):
    from recbole.utils import get_model

    from conftest import untrained_model

    model, train = untrained_model("DERRD", tiny)
    other = get_model("BPR")(model.teacher_config, train._dataset)
    model.use_teacher(other, model.teacher_config)
    assert model.teacher is other and model.context.teacher.model is other
    assert model.term("DE").teacher.model is other and not other.training
    users = torch.tensor([1, 2])
    assert torch.equal(model.term("DE").teacher.user_repr(users), other.user_embedding(users))


def test_hyper_tuning_trials_share_the_teacher_search(tiny, workdir):
    """Each HyperTuning trial runs the search; only the first trains its candidates."""
    pytest.importorskip("hyperopt", reason="HyperTuning needs the optional hyperopt package")
    from conftest import exhaustive_hyper_tuning

    grid = workdir / "grid.yaml"
    grid.write_text("learning_rate: [0.05]\n")
    tuner = exhaustive_hyper_tuning(workdir, dict(tiny, model="RRD", epochs=1, tune_teacher=2,
                                                  teacher_grid_file=str(grid)), "rrd_weight choice [0.01,0.1]\n")
    assert len(tuner.params2result) == 2
    cache = os.path.join(tiny["checkpoint_dir"], "teachers")
    assert len(glob.glob(os.path.join(cache, "*.pth"))) == 2  # one entry per candidate
    # the table is rewritten by every trial's search: the second trial read both from the cache
    (table,) = glob.glob(os.path.join(cache, "*.search.json"))
    assert [c["source"] for c in json.load(open(table))["candidates"]] == ["cache", "cache"]
