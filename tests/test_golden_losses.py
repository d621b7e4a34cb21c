"""Stored loss parts and gradients of DE, RRD, DERRD, RD and CD on one fixed batch.

A guard for refactors: the values in ``tests/data/golden_losses.json`` were recorded from the
code before the distillation core was restructured; any change in what a method computes shows
here.  The teacher is the seeded, untrained shell (no training: nothing here depends on how a
CPU rounds a training run), the batch is the first of the seeded training loader, and each
model is checked at epoch 0 (DE's dense phase) and epoch 3 (tau 1e-3: DE's sparse phase; RD's
dynamic weights).  Regenerate only on purpose: ``RECBOLE_DERRD_REGENERATE_GOLDEN=1``.
"""

import json
import os

import pytest

import recbole_derrd  # noqa: F401  (registers the models)

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "golden_losses.json")
MODELS = ("DE", "RRD", "DERRD", "RD", "CD")
EPOCHS = (0, 3)


def _record(model_name, tiny):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    # de_rows: batch -- the paper's rows, which the stored values were recorded with
    settings = dict(tiny, de_anneal_epochs=2, de_tau_end=1e-3, rd_warmup_epochs=1, rd_k=5, cd_samples=5,
                    de_rows="batch")
    config = Config(model=model_name, config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model(model_name)(config, train._dataset)
    model.teacher_ready = True  # the seeded, untrained teacher shell: no training in this test
    model.teacher_adapter.begin_step()
    model.prepare_terms(train)
    batch = next(iter(train))
    record = {}
    for epoch in EPOCHS:
        model.start_epoch(epoch)
        model.zero_grad(set_to_none=True)
        parts = model.calculate_loss(batch)
        sum(parts).backward()
        record[str(epoch)] = {
            "parts": [[name, float(p)] for name, p in zip(model.loss_part_names, parts)],
            "grads": {name: [float(p.grad.sum()), float(p.grad.norm())]
                      for name, p in sorted(model.named_parameters()) if p.grad is not None},
        }
    return record


@pytest.fixture(scope="module")
def golden():
    if os.environ.get("RECBOLE_DERRD_REGENERATE_GOLDEN") or not os.path.exists(GOLDEN):
        return None
    with open(GOLDEN) as handle:
        return json.load(handle)


@pytest.mark.parametrize("model_name", MODELS)
def test_loss_parts_and_gradients_match_the_stored_values(tiny, golden, model_name):
    record = _record(model_name, tiny)
    if golden is None:  # regenerating: write this model's values
        stored = json.load(open(GOLDEN)) if os.path.exists(GOLDEN) else {}
        stored[model_name] = record
        with open(GOLDEN, "w") as handle:
            json.dump(stored, handle, indent=1, sort_keys=True)
        pytest.skip("golden values regenerated")
    expected = golden[model_name]
    for epoch in map(str, EPOCHS):
        got, want = record[epoch], expected[epoch]
        assert [name for name, _ in got["parts"]] == [name for name, _ in want["parts"]]
        for (name, value), (_, stored) in zip(got["parts"], want["parts"]):
            assert value == pytest.approx(stored, rel=1e-4, abs=1e-6), (epoch, name)
        assert sorted(got["grads"]) == sorted(want["grads"]), epoch
        for name, values in want["grads"].items():
            assert got["grads"][name] == pytest.approx(values, rel=1e-4, abs=1e-6), (epoch, name)
