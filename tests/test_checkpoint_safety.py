"""Crafted checkpoints are refused with no side effect; genuine ones load; loaded settings never
steer the run (see tests/crafted_checkpoints.py for the corpus and how it is observed)."""

import collections
import json
import os
import subprocess
import sys

import pytest
import torch

from recbole_derrd import safe_unpickle
from recbole_derrd.checkpoints import CheckpointError, load_checkpoint

from conftest import ROOT

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import crafted_checkpoints  # noqa: E402

REFUSED = sorted(crafted_checkpoints.payloads("unused"))


@pytest.fixture(scope="module")
def observed(tmp_path_factory):
    """Every crafted file loaded in one fresh interpreter; its report per file."""
    folder = tmp_path_factory.mktemp("crafted")
    crafted_checkpoints.write_corpus(str(folder))
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("CUDA_VISIBLE_DEVICES", None)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "crafted_checkpoints.py"), str(folder)],
                          cwd=str(folder), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line[len("REPORT "):]) for line in proc.stdout.splitlines()
               if line.startswith("REPORT ")]
    return {r["name"]: r for r in reports}, folder


@pytest.mark.parametrize("name", REFUSED)
def test_crafted_checkpoint_is_refused_without_side_effect(observed, name):
    reports, folder = observed
    report = reports[name]
    assert report["refused"], report["error"]
    assert report["new_files"] == [] and not (folder / "pwned").exists()
    assert report["env_changed"] == {}
    assert report["new_modules"] == []
    assert report["connections"] == [] and not report["process_group"]
    assert not report["class_changed"]


def test_loaded_settings_never_steer_devices_or_processes(observed):
    """A Config state naming GPU 7 and a remote process group loads as plain data, but the
    loaded Config describes one local process, and rebuilding the run from it connects nowhere."""
    report = observed[0]["steering_state"]
    assert not report["refused"] and "does not fit model BPR" in report["error"]
    config = report["loaded_config"]
    assert config["gpu_id"] == "" and config["device"] == "cpu" and config["local_rank"] == "0"
    assert not {"world_size", "nproc", "ip", "port"} & set(config)
    assert report["env_changed"].get("CUDA_VISIBLE_DEVICES") != "7"
    assert report["connections"] == [] and not report["process_group"]


def test_globals_resolve_from_the_exact_table_only():
    import scipy.sparse
    from recbole.model.general_recommender.bpr import BPR

    from recbole_derrd.model.distilled import DERRD

    assert safe_unpickle.resolve("scipy.sparse._csc", "csc_matrix") is scipy.sparse.csc_matrix
    assert safe_unpickle.resolve("recbole.model.general_recommender.bpr", "BPR") is BPR
    assert safe_unpickle.resolve("recbole_derrd.model.distilled", "DERRD") is DERRD
    for module, name in [("scipy.sparse", "save_npz"), ("os", "csr_matrix"), ("numpy", "load"),
                         ("recbole.model.general_recommender", "BPR"), ("builtins", "eval"),
                         ("recbole.config.configurator", "Config.__init__")]:
        with pytest.raises(safe_unpickle.UnsafeCheckpointError):
            safe_unpickle.resolve(module, name)


def test_tensor_rebuild_checks_hooks_and_metadata():
    storage = torch.zeros(2).untyped_storage()
    safe_unpickle._check_rebuild_tensor((storage, 0, (2,), (1,), False, collections.OrderedDict()))
    with pytest.raises(safe_unpickle.UnsafeCheckpointError, match="backward hooks"):
        safe_unpickle._check_rebuild_tensor(
            (storage, 0, (2,), (1,), False, collections.OrderedDict({0: torch.device})))
    with pytest.raises(safe_unpickle.UnsafeCheckpointError, match="metadata"):
        safe_unpickle._check_rebuild_tensor(
            (storage, 0, (2,), (1,), False, collections.OrderedDict(), {"x": torch.device}))


def test_plain_data_check():
    from recbole.utils.enum_type import ModelType

    assert safe_unpickle.is_plain({"a": [1, 2.0, "x", None, (True,)], "b": torch.ones(1),
                                   "c": ModelType.GENERAL, "d": torch.device("cpu")})
    assert not safe_unpickle.is_plain({"a": collections.OrderedDict})
    assert not safe_unpickle.is_plain([object()])
    cycle = []
    cycle.append(cycle)
    assert safe_unpickle.is_plain(cycle)


def test_loader_resets_device_and_distributed_keys(tmp_path):
    from recbole.config import Config

    config = Config(model="BPR", dataset="ml-100k", config_dict={"state": "ERROR"})
    config.final_config_dict.update(gpu_id="3", world_size=4, ip="10.0.0.9", port="99", nproc=4, local_rank=2)
    path = tmp_path / "ckpt.pth"
    torch.save({"config": config, "state_dict": {}}, path, pickle_protocol=4)
    loaded = load_checkpoint(path)["config"]
    assert loaded["gpu_id"] == "" and loaded["local_rank"] == 0 and loaded["single_spec"]
    assert loaded["device"] == torch.device("cpu") and not loaded["use_gpu"]
    assert all(loaded[k] is None for k in ("world_size", "ip", "port", "nproc"))
    assert loaded["model"] == "BPR" and loaded["embedding_size"] == config["embedding_size"]


def test_directory_is_not_a_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file"):
        load_checkpoint(tmp_path)


def test_protocol_2_bytes_load_but_only_as_latin1_text(tmp_path):
    """Protocol 2 pickles bytes as ``_codecs.encode(text, "latin1")``: allowed for that only."""
    path = tmp_path / "p2.pth"
    torch.save({"state_dict": {}, "blob": b"\x00\xffraw"}, path, pickle_protocol=2)
    assert load_checkpoint(path)["blob"] == b"\x00\xffraw"
    with pytest.raises(safe_unpickle.UnsafeCheckpointError):
        safe_unpickle._check_latin1_bytes(("text", "rot13"))
