"""Shared fixtures: a temporary working directory and a tiny synthetic RecBole dataset.

RecBole writes ./log, ./log_tensorboard and ./saved relative to the working directory, so every
test that runs RecBole does it inside ``tmp_path``.  The dataset is generated (seeded), never
copied from a third party.
"""

import os
import sys

import numpy as np
import pytest

# The suite runs on the CPU on every machine: its hand-computed values are CPU values, and its
# unit tests build models as RecBole's quick start does before moving them to a device.  Set
# before the plugin is imported, so RecBole keeps it (recbole_derrd.distributed.gpu_hidden);
# test_gpu.py starts its own processes with the GPUs the suite was started with.
GPUS_AT_START = os.environ.get("CUDA_VISIBLE_DEVICES")
os.environ["CUDA_VISIBLE_DEVICES"] = ""

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")


def gpu_visible_in(env):
    """Whether a fresh interpreter started with ``env`` sees a CUDA GPU (this one hides them)."""
    import subprocess

    probe = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                           capture_output=True, text=True, timeout=300, env=env)
    return probe.stdout.strip() == "True"


def write_tiny_dataset(folder, name="tiny", n_users=60, n_items=150, per_user=14, seed=0):
    """Implicit feedback with popularity skew, in RecBole's atomic format, with timestamps."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.7
    popularity /= popularity.sum()
    path = os.path.join(folder, name)
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, name + ".inter"), "w", encoding="utf-8") as handle:
        handle.write("user_id:token\titem_id:token\ttimestamp:float\n")
        for user in range(n_users):
            count = per_user + int(rng.integers(0, per_user))
            items = rng.choice(n_items, size=count, replace=False, p=popularity)
            for t, item in enumerate(items):
                handle.write("u%d\ti%d\t%d\n" % (user, item, 1000 * user + t))
    return folder


def untrained_model(model_name, config_dict):
    """(model, train data) of ``model_name`` built the way RecBole builds it, not trained."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    config = Config(model=model_name, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    train, _, _ = data_preparation(config, create_dataset(config))
    return get_model(model_name)(config, train._dataset), train


def prepared_model(model_name, config_dict):
    """(config, model, train data) of a distilled ``model_name`` whose teacher is ready and whose
    terms have started epoch 0: what a term's unit test inspects."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    from recbole_derrd.teacher import prepare_distillation

    config = Config(model=model_name, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    train, valid, _ = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    net = get_model(model_name)(config, train._dataset)
    prepare_distillation(net, train, valid)
    net.start_epoch(0)
    return config, net, train


def exhaustive_hyper_tuning(folder, fixed_settings, params_text, max_evals=2):
    """A RecBole HyperTuning run (exhaustive, in process) over ``params_text`` with
    ``fixed_settings`` as its fixed config file; returns the finished tuner."""
    import yaml
    from recbole.quick_start import objective_function
    from recbole.trainer import HyperTuning

    fixed = folder / "fixed.yaml"
    fixed.write_text(yaml.safe_dump(fixed_settings))
    params = folder / "params.hyper"
    params.write_text(params_text)
    tuner = HyperTuning(objective_function, algo="exhaustive", early_stop=10, max_evals=max_evals,
                        params_file=str(params), fixed_config_file_list=[str(fixed)])
    tuner.run()
    return tuner


def write_benchmark_split(folder, edit=None, name="tiny"):
    """Replace ``<folder>/<name>/<name>.inter`` by RecBole benchmark files (train / valid /
    test: per user, the last interaction is test and the one before it valid); ``edit(parts)``
    may change the parts ({"train": rows, ...}) before they are written."""
    source = os.path.join(folder, name, name + ".inter")
    with open(source, encoding="utf-8") as handle:
        header, *rows = handle.read().splitlines()
    by_user = {}
    for row in rows:
        by_user.setdefault(row.split("\t")[0], []).append(row)
    parts = {"train": [], "valid": [], "test": []}
    for user_rows in by_user.values():
        parts["train"] += user_rows[:-2]
        parts["valid"].append(user_rows[-2])
        parts["test"].append(user_rows[-1])
    if edit is not None:
        edit(parts)
    for part, part_rows in parts.items():
        with open(os.path.join(folder, name, "%s.%s.inter" % (name, part)), "w", encoding="utf-8") as handle:
            handle.write("\n".join([header] + part_rows) + "\n")
    os.remove(source)
    return folder


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["pytest"])  # RecBole's Config reads --key=value from argv
    return tmp_path


@pytest.fixture
def tiny(workdir):
    """Config dict of a fast, complete DE-RRD run on the tiny dataset."""
    data_path = write_tiny_dataset(str(workdir / "data"))
    return {
        "dataset": "tiny",
        "data_path": data_path,
        "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                      "mode": "uni50"},
        "metrics": ["Hit", "MRR", "NDCG"],
        "topk": [5, 10],
        "valid_metric": "NDCG@10",
        "epochs": 2,
        "t_epochs": 3,
        "train_batch_size": 256,
        "eval_batch_size": 4096,
        "embedding_size": 8,
        "t_embedding_size": 16,
        "de_num_experts": 4,
        "rrd_top_n": 20,
        "rrd_k": 5,
        "rrd_l": 5,
        "show_progress": False,
        "state": "WARNING",
        "checkpoint_dir": str(workdir / "saved"),
        "seed": 7,
    }


@pytest.fixture
def tiny_seq(tiny):
    """The tiny dataset under RecBole's sequential protocol, SASRec 16 -> SASRec 8."""
    return dict(tiny, eval_args={"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user",
                                 "mode": "full"},
                train_neg_sample_args=None, MAX_ITEM_LIST_LENGTH=10, student_model="SASRec",
                teacher_model="SASRec", hidden_size=8, t_hidden_size=16, inner_size=16, t_inner_size=32,
                n_layers=1, t_n_layers=1, rrd_top_n=20, rrd_k=5, rrd_l=5)
