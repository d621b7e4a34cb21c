"""flush_denormal: the plugin's runs treat denormal floats as zero (recbole_derrd/numerics.py)."""

import pytest
import torch

from recbole_derrd.numerics import flush_denormals

DENORMAL = 1e-39  # below float32's smallest normal number, 1.18e-38


def flushed():
    """Whether this thread now flushes denormals (a denormal times one gives zero)."""
    return (torch.tensor([DENORMAL]) * 1.0).item() == 0.0


class _Missing(dict):
    def __getitem__(self, key):  # RecBole's Config returns None for a key it does not hold
        return self.get(key)


@pytest.fixture(autouse=True)
def ieee_around():
    """Each test starts and ends with IEEE behaviour: an earlier plugin run in this process
    (any end-to-end test) leaves flush-to-zero on."""
    torch.set_flush_denormal(False)
    yield
    torch.set_flush_denormal(False)


@pytest.fixture
def ftz_capable():
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU has no flush-to-zero mode (torch.set_flush_denormal returns False)")
    torch.set_flush_denormal(False)


def test_flush_denormals_follows_the_key(ftz_capable):
    assert not flushed()
    assert flush_denormals({"flush_denormal": True}) is True and flushed()
    assert flush_denormals({"flush_denormal": False}) is False and not flushed()
    torch.set_flush_denormal(True)
    assert flush_denormals(_Missing()) is False and flushed()  # no key: left alone
    with pytest.raises(ValueError, match="flush_denormal"):
        flush_denormals({"flush_denormal": "yes"})


def test_a_stock_config_leaves_the_mode_alone(ftz_capable):
    assert flush_denormals(_Missing()) is False and not flushed()


def test_a_plugin_run_flushes_from_the_data_loading_on_and_the_key_turns_it_off(tiny, ftz_capable):
    from recbole_derrd.quick_start import prepare

    prepare("DERRD", None, None, dict(tiny))
    assert flushed()
    prepare("DERRD", None, None, dict(tiny, flush_denormal=False))
    assert not flushed()


def test_the_trainer_sets_it_for_a_process_that_skipped_load_data(tiny, ftz_capable):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    config = Config(model="DERRD", config_dict=dict(tiny, epochs=1, t_epochs=1))
    init_seed(config["seed"], config["reproducibility"])
    train, valid, _ = data_preparation(config, create_dataset(config))
    assert not flushed()
    model = get_model("DERRD")(config, train._dataset)
    get_trainer(config["MODEL_TYPE"], "DERRD")(config, model).fit(train, valid, saved=False)
    assert flushed()
