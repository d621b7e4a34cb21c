"""One test per work-around in recbole_derrd.compat."""

import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from recbole_derrd import checkpoints, compat


def test_stack_problems_name_each_package():
    ok = {"numpy": "1.26.4", "pandas": "2.3.3", "setuptools": "81.0.0"}
    assert compat.stack_problems(ok, python_version=(3, 11)) == []
    bad = {"numpy": "2.1.0", "pandas": "3.0.1", "setuptools": "82.0.0"}
    problems = compat.stack_problems(bad, python_version=(3, 12))
    assert len(problems) == 4
    text = "\n".join(problems)
    for fragment in ("numpy 2.1.0", "np.float_", "pandas 3.0.1", "fillna", "setuptools 82.0.0",
                     "pkg_resources", "Python 3.12"):
        assert fragment in text
    assert compat.stack_problems({"numpy": None}, python_version=(3, 11)) == []


def test_check_stack_passes_here():
    compat.check_stack()


def test_dok_update_shim_semantics():
    class Bare:
        pass

    assert compat.install_scipy_dok_update(Bare) is True
    assert compat.install_scipy_dok_update(Bare) is False  # idempotent
    matrix = sp.dok_matrix((3, 4), dtype=np.float32)
    compat._dok_update(matrix, {(0, 1): 1.0, (2, 3): 5.0})
    expected = np.zeros((3, 4), dtype=np.float32)
    expected[0, 1], expected[2, 3] = 1.0, 5.0
    np.testing.assert_array_equal(matrix.toarray(), expected)
    assert hasattr(sp.dok_matrix, "_update")  # installed on import of recbole_derrd


def test_lightgcn_adjacency_builds_with_installed_scipy(tiny):
    """RecBole's LightGCN calls dok_matrix._update, gone in scipy >= 1.13."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model

    config = Config(model="LightGCN", config_dict=tiny)
    train, _, _ = data_preparation(config, create_dataset(config))
    model = get_model("LightGCN")(config, train._dataset)
    adjacency = model.norm_adj_matrix.to_dense()
    assert adjacency.shape[0] == train._dataset.user_num + train._dataset.item_num
    assert torch.count_nonzero(adjacency) == 2 * train._dataset.inter_num


def test_load_checkpoint_reads_what_default_torch_load_rejects(tmp_path):
    from recbole.config import Config

    path = tmp_path / "ckpt.pth"
    config = Config(model="BPR", dataset="ml-100k", config_dict={"state": "ERROR"})
    torch.save({"config": config, "state_dict": {"w": torch.ones(2)}}, path, pickle_protocol=4)
    if tuple(int(x) for x in torch.__version__.split(".")[:2]) >= (2, 6):
        with pytest.raises(Exception, match="weights_only"):
            torch.load(path)
    loaded = checkpoints.load_checkpoint(path)
    assert loaded["config"]["model"] == "BPR"
    torch.testing.assert_close(loaded["state_dict"]["w"], torch.ones(2))


def test_load_checkpoint_errors_name_the_file(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="checkpoint file not found: .*missing.pth"):
        checkpoints.load_checkpoint(tmp_path / "missing.pth")
    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.arange(1000)}}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(checkpoints.CheckpointError, match="truncated.pth"):
        checkpoints.load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(checkpoints.CheckpointError, match="garbage.pth"):
        checkpoints.load_checkpoint(garbage)


def test_pandas_inplace_warning_is_silenced():
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compat.silence_pandas_inplace_warning()
        warnings.warn("A value is trying to be set on a copy\nThis inplace method will never work because",
                      FutureWarning)
    assert caught == []


def test_trusted_loading_is_opt_in_with_warning(tmp_path, monkeypatch):
    path = tmp_path / "other.pth"
    torch.save({"state_dict": {}, "extra": checkpoints.CheckpointError("kept")}, path)
    with pytest.raises(checkpoints.CheckpointError, match="refusing"):
        checkpoints.load_checkpoint(path)
    with pytest.warns(UserWarning, match="full unpickling"):
        assert isinstance(checkpoints.load_checkpoint(path, trusted=True)["extra"], checkpoints.CheckpointError)
    monkeypatch.setenv(checkpoints.TRUST_ENV, "1")
    with pytest.warns(UserWarning, match="files you trust"):
        checkpoints.load_checkpoint(path)


@pytest.mark.parametrize("model", ["BPR", "LightGCN", "NeuMF", "DERRD", "RD", "CD", "ItemKNN", "Pop", "EASE"])
def test_genuine_recbole_checkpoints_load_safely(tiny, model):
    from recbole_derrd.quick_start import run_recbole

    result = run_recbole(model, config_dict=dict(tiny, epochs=1), saved=True)
    checkpoint = checkpoints.load_checkpoint(result["saved_model_file"])
    assert checkpoint["config"]["model"] == model
    assert checkpoint["state_dict"] or checkpoint.get("other_parameter")


def test_safe_trainer_class_covers_the_trainer_family_only():
    from recbole.trainer import DecisionTreeTrainer, KGTrainer, Trainer

    from recbole_derrd.trainer import SafeCheckpointMixin, safe_trainer_class

    assert issubclass(safe_trainer_class(Trainer), SafeCheckpointMixin)
    assert issubclass(safe_trainer_class(KGTrainer), KGTrainer)
    assert safe_trainer_class(KGTrainer) is safe_trainer_class(KGTrainer)  # cached
    assert safe_trainer_class(DecisionTreeTrainer) is DecisionTreeTrainer


def test_recbole_ensure_dir_tolerates_a_concurrent_creator(tmp_path, monkeypatch):
    """Two DDP ranks: both see the folder missing, the second makedirs must not fail."""
    import os

    from recbole.trainer import trainer as trainer_module
    from recbole.utils import ensure_dir

    folder = tmp_path / "saved"
    folder.mkdir()
    monkeypatch.setattr(os.path, "exists", lambda path: False)  # the other rank was first
    ensure_dir(str(folder))
    trainer_module.ensure_dir(str(folder / "nested"))  # the name the Trainer imported
    assert (folder / "nested").is_dir()


def test_recbole_sequential_import_leaves_autograd_anomaly_mode_off():
    """RecBole's sine.py switches anomaly detection on at import; after the plugin's import the
    sequential package, the safe unpickler's model table and a checkpoint load leave it off."""
    import subprocess
    import sys

    code = ("import torch, recbole_derrd, sys\n"
            "assert 'recbole.model.sequential_recommender.sine' in sys.modules\n"
            "import recbole.model.sequential_recommender\n"
            "from recbole_derrd.safe_unpickle import model_classes\n"
            "assert len(model_classes()) > 60\n"
            "print(torch.is_anomaly_enabled())\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "False"
    # and the guard really is what keeps it off: a bare import switches it on
    bare = subprocess.run([sys.executable, "-c", "import torch, recbole.model.sequential_recommender; "
                           "print(torch.is_anomaly_enabled())"], capture_output=True, text=True, timeout=300)
    assert bare.stdout.strip() == "True"


def test_recbole_logger_wraps_stdout_once(monkeypatch):
    """RecBole's init_logger calls colorama.init on every run; colorama 0.4.x wraps the current
    stdout each time, so a process running hundreds of trainings died of a RecursionError."""
    import io

    import colorama
    import recbole.utils.logger
    from colorama.ansitowin32 import StreamWrapper

    def depth():
        stream, count = sys.stdout, 0
        while isinstance(stream, StreamWrapper):
            stream, count = stream._StreamWrapper__wrapped, count + 1
        return count

    for init, expected in ((colorama.init, 3), (recbole.utils.logger.init, 1)):
        monkeypatch.setattr(sys, "stdout", io.StringIO())
        monkeypatch.setattr(sys, "stderr", io.StringIO())
        for _ in range(3):
            init(autoreset=True)
        assert depth() == expected
        colorama.deinit()


@pytest.mark.parametrize("env_value, settings, hidden", [
    (None, {}, False),                       # RecBole's default: GPU 0 when there is one
    ("", {}, True),                          # started with every GPU hidden: stays hidden
    (None, {"use_gpu": False}, True),        # RecBole 1.2.1 ignored use_gpu for the device
    ("", {"gpu_id": "1"}, True),
])
def test_recbole_keeps_the_cpu_when_asked(env_value, settings, hidden, workdir):
    """RecBole picks the device from gpu_id alone and writes gpu_id into CUDA_VISIBLE_DEVICES,
    so `use_gpu: False` and a process started with `CUDA_VISIBLE_DEVICES=` both got GPU 0 back."""
    import json
    import os
    import subprocess
    import sys

    from conftest import ROOT, gpu_visible_in

    code = ("import os, sys, json, torch, recbole_derrd\n"
            "from recbole.config import Config\n"
            "config = Config(model='BPR', dataset='ml-100k', config_dict=json.loads(sys.argv[1]))\n"
            "print(json.dumps([config['gpu_id'], str(config['device']), os.environ['CUDA_VISIBLE_DEVICES']]))\n")
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env["PYTHONPATH"] = ROOT
    if env_value is not None:
        env["CUDA_VISIBLE_DEVICES"] = env_value
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(settings)], capture_output=True, text=True,
                          timeout=300, env=env, cwd=str(workdir))
    assert proc.returncode == 0, proc.stderr[-2000:]
    gpu_id, device, visible = json.loads(proc.stdout.strip().splitlines()[-1])
    if hidden:
        assert gpu_id == "" and visible == "" and device == "cpu"
    else:
        assert gpu_id == settings.get("gpu_id", "0") and visible == gpu_id
        assert device == ("cuda" if gpu_visible_in(env) else "cpu")
