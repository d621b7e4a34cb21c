"""valid_negatives: fixed -- a sampled validation's candidates drawn once per run and reused."""

import numpy as np
import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import get_model, init_seed

import recbole_derrd  # noqa: F401  (registration)
from recbole_derrd.quick_start import run_recbole
from recbole_derrd.teacher import cache_description
from recbole_derrd.trainer import FixedCandidates, safe_trainer, valid_negatives


def _loaders(settings):
    config = Config(model="BPR", config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    return config, train, valid, test


def _same_batches(a, b):
    return len(a) == len(b) and all(
        torch.equal(x[0]["item_id"], y[0]["item_id"]) and torch.equal(x[0]["user_id"], y[0]["user_id"])
        for x, y in zip(a, b))


def test_candidates_are_drawn_once_from_their_own_stream(tiny):
    config, _, valid, _ = _loaders(tiny)
    before = np.random.get_state()[1].copy()
    fixed = FixedCandidates.of(valid, seed=5)
    assert np.array_equal(np.random.get_state()[1], before)  # the global stream is untouched
    assert _same_batches(list(fixed), list(fixed))  # replayed, not redrawn
    again = FixedCandidates.of(valid, seed=5)  # the same seed draws the same candidates
    assert _same_batches(list(fixed), list(again))
    assert not _same_batches(list(fixed), list(FixedCandidates.of(valid, seed=6)))
    # RecBole's own loader redraws at every pass
    assert not _same_batches(list(valid), list(valid))
    assert len(fixed) == len(valid) and fixed._dataset is valid._dataset


def test_full_ranking_loader_is_left_alone(tiny):
    settings = dict(tiny, eval_args=dict(tiny["eval_args"], mode="full"))
    _, _, valid, _ = _loaders(settings)
    assert FixedCandidates.of(valid, seed=0) is valid


def test_fixed_validation_scores_every_epoch_on_the_same_candidates(tiny):
    results = {}
    for mode in ("redraw", "fixed"):
        config, train, valid, _ = _loaders(dict(tiny, valid_negatives=mode))
        model = get_model("BPR")(config, train._dataset)
        trainer = safe_trainer(config, model)
        trainer._valid_source = valid  # as fit sets it
        results[mode] = [trainer.evaluate(valid, load_best_model=False)["ndcg@10"] for _ in range(3)]
    assert len(set(results["fixed"])) == 1  # the same model on the same candidates
    assert len(set(results["redraw"])) > 1  # RecBole's: other candidates at every pass


def _last_weights(tiny, folder, **settings):
    import glob
    import os

    from recbole_derrd.checkpoints import load_checkpoint

    checkpoint_dir = os.path.join(tiny["checkpoint_dir"], folder)
    run_recbole("BPR", config_dict=dict(tiny, epochs=2, checkpoint_dir=checkpoint_dir, **settings), saved=True)
    (last,) = glob.glob(os.path.join(checkpoint_dir, "*-last.pth"))
    return load_checkpoint(last)["state_dict"]["item_embedding.weight"]


def test_a_fixed_run_trains_the_same_whatever_the_evaluation_step(tiny):
    """Validation draws nothing from the global stream, so the training negatives (and with
    them the weights after the last epoch) do not depend on how often the run evaluates."""
    every, every_other = (_last_weights(tiny, "f%d" % step, valid_negatives="fixed", eval_step=step)
                          for step in (1, 2))
    assert torch.equal(every, every_other)
    every, every_other = (_last_weights(tiny, "r%d" % step, eval_step=step) for step in (1, 2))
    assert not torch.equal(every, every_other)  # RecBole's redraw consumes the training stream


def test_bad_value_is_a_clear_error_before_training(tiny):
    with pytest.raises(ValueError, match="valid_negatives='sometimes' must be one of"):
        run_recbole("BPR", config_dict=dict(tiny, valid_negatives="sometimes"))
    with pytest.raises(ValueError, match="valid_negatives='sometimes'"):
        Config(model="DERRD", config_dict=dict(tiny, valid_negatives="sometimes"))
    assert valid_negatives({"valid_negatives": None}) == "redraw"


def test_teacher_cache_key_changes_only_for_fixed(tiny):
    fingerprint = {"n_users": 1}
    plain = cache_description(Config(model="BPR", config_dict=tiny), fingerprint)
    assert "valid_negatives" not in plain["settings"]  # keys of existing caches are unchanged
    assert cache_description(Config(model="BPR", config_dict=dict(tiny, valid_negatives="redraw")),
                             fingerprint) == plain
    fixed = cache_description(Config(model="BPR", config_dict=dict(tiny, valid_negatives="fixed")), fingerprint)
    assert fixed["settings"]["valid_negatives"] == "fixed"
