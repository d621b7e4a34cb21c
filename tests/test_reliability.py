"""No lost work and clear failures: atomic saves, non-finite losses, resume after SIGKILL."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import recbole_derrd.checkpoints as checkpoints
from recbole_derrd.checkpoints import load_checkpoint
from recbole_derrd.terms import RRD as RRDTerm
from recbole_derrd.quick_start import run_recbole

from conftest import ROOT


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "model.pth"
    checkpoints.atomic_save({"state_dict": {"w": torch.ones(3)}}, path)
    real_save = torch.save

    def crash_midway(obj, stream, **kwargs):
        stream.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt("killed while saving")

    monkeypatch.setattr(checkpoints.torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.atomic_save({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.setattr(checkpoints.torch, "save", real_save)
    torch.testing.assert_close(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    assert os.listdir(tmp_path) == ["model.pth"]  # no temporary file left behind


def test_non_finite_loss_stops_with_part_and_epoch(tiny, monkeypatch):
    real = RRDTerm.raw_loss
    epochs = []
    real_start = RRDTerm.start_epoch

    def record_epoch(self, epoch):
        epochs.append(epoch)
        return real_start(self, epoch)

    def explode_in_epoch_one(self, batch):
        value = real(self, batch)
        return value * float("inf") if epochs[-1] == 1 else value

    monkeypatch.setattr(RRDTerm, "start_epoch", record_epoch)
    monkeypatch.setattr(RRDTerm, "raw_loss", explode_in_epoch_one)
    with pytest.raises(FloatingPointError, match="the RRD loss became inf in epoch 1"):
        run_recbole("DERRD", config_dict=dict(tiny, epochs=3), saved=True)
    saved = [f for f in glob.glob(os.path.join(tiny["checkpoint_dir"], "DERRD-*.pth"))]
    last = [f for f in saved if f.endswith("-last.pth")]
    best = [f for f in saved if not f.endswith("-last.pth")]
    assert len(last) == 1 and len(best) == 1
    assert load_checkpoint(last[0])["epoch"] == 0 and load_checkpoint(best[0])["epoch"] == 0


@pytest.mark.parametrize("key,value", [("embedding_size", 0), ("t_embedding_size", -4)])
def test_non_positive_sizes_are_rejected(tiny, key, value):
    with pytest.raises(ValueError, match="%s=%s .* must be a positive integer" % (key, value)):
        run_recbole("DE", config_dict=dict(tiny, **{key: value}), saved=False)


def test_list_sizes_are_checked(tiny):
    with pytest.raises(ValueError, match=r"t_mlp_hidden_size=\[16, 0\] .* or a list of them"):
        run_recbole("DE", config_dict=dict(tiny, teacher_model="NeuMF", t_mlp_hidden_size=[16, 0]),
                    saved=False)


def test_same_seed_same_metrics_with_fresh_teachers(tiny, tmp_path):
    first = run_recbole("DERRD", config_dict=dict(tiny, teacher_cache_dir=str(tmp_path / "a")), saved=True)
    second = run_recbole("DERRD", config_dict=dict(tiny, teacher_cache_dir=str(tmp_path / "b")), saved=True)
    assert first["test_result"] == second["test_result"]


RUN = r"""
import json, sys, yaml
from recbole_derrd.quick_start import run_recbole
config = yaml.safe_load(open(sys.argv[1]))
if len(sys.argv) > 2:
    config["resume"] = sys.argv[2]
result = run_recbole("DERRD", config_dict=config, saved=True)
print("RESULT " + json.dumps(dict(result["test_result"])))
"""


def _result(stdout):
    line = [l for l in stdout.splitlines() if l.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_sigkill_then_resume_gives_the_uninterrupted_metrics(tiny, workdir):
    script = workdir / "run.py"
    script.write_text(RUN)
    env = dict(os.environ, PYTHONPATH=ROOT)
    common = dict(tiny, epochs=6, stopping_step=100, teacher_cache_dir=str(workdir / "teachers"))

    def config_file(name, checkpoint_dir):
        path = workdir / name
        path.write_text(yaml.safe_dump(dict(common, checkpoint_dir=str(checkpoint_dir))))
        return str(path)

    straight = subprocess.run([sys.executable, str(script), config_file("a.yaml", workdir / "a")],
                              cwd=str(workdir), env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]

    killed_dir = workdir / "b"
    proc = subprocess.Popen([sys.executable, str(script), config_file("b.yaml", killed_dir)],
                            cwd=str(workdir), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if glob.glob(str(killed_dir / "DERRD-*-last.pth")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    last = glob.glob(str(killed_dir / "DERRD-*-last.pth"))[0]
    assert load_checkpoint(last)["epoch"] < 5

    resumed = subprocess.run([sys.executable, str(script), config_file("b.yaml", killed_dir), last],
                             cwd=str(workdir), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _result(resumed.stdout) == _result(straight.stdout)


def _mutated_dataset(workdir, name, mutate):
    from conftest import write_tiny_dataset

    folder = write_tiny_dataset(str(workdir / name))
    path = os.path.join(folder, "tiny", "tiny.inter")
    lines = open(path).read().splitlines()
    with open(path, "w") as handle:
        handle.write(mutate(lines))
    return folder, path


@pytest.mark.parametrize("name,mutate,message", [
    ("no_item_column", lambda lines: "\n".join("\t".join(l.split("\t")[::2]) for l in lines) + "\n",
     r"has no 'item_id' column \(ITEM_ID_FIELD\); its columns are \['user_id', 'timestamp'\]"),
    ("zero_bytes", lambda lines: "", "is empty: it needs a header"),
    ("header_only", lambda lines: lines[0] + "\n", "has a header but no interactions"),
])
def test_bad_dataset_files_are_named(tiny, workdir, name, mutate, message):
    folder, path = _mutated_dataset(workdir, name, mutate)
    with pytest.raises(ValueError, match=message) as error:
        run_recbole("DERRD", config_dict=dict(tiny, data_path=folder), saved=False)
    assert path in str(error.value)


def test_missing_dataset_file_is_named(tiny, workdir):
    with pytest.raises(FileNotFoundError, match=r"dataset file not found: .*nowhere.*tiny.inter"):
        run_recbole("DERRD", config_dict=dict(tiny, data_path=str(workdir / "nowhere")), saved=False)


def test_single_interaction_users_stay_in_training_only(tiny, workdir):
    """Documented behaviour (RecBole's): leave-one-out holds nothing out for them."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation

    folder, _ = _mutated_dataset(workdir, "single", lambda lines: "\n".join(lines + ["lonely\ti3\t5"]) + "\n")
    result = run_recbole("DERRD", config_dict=dict(tiny, data_path=folder), saved=False)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    config = Config(model="DERRD", config_dict=dict(tiny, data_path=folder))
    data = create_dataset(config)
    train, valid, test = data_preparation(config, data)
    lonely = data.token2id("user_id", "lonely")
    counts = [int((d._dataset.inter_feat["user_id"] == lonely).sum()) for d in (train, valid, test)]
    assert counts == [1, 0, 0]


def test_users_and_items_only_in_test_files_get_ids(tiny, workdir):
    """Documented behaviour (RecBole's): benchmark files share one token map."""
    from conftest import write_benchmark_split, write_tiny_dataset

    folder = write_benchmark_split(write_tiny_dataset(str(workdir / "bench")),
                                   lambda parts: parts["test"].append("newcomer\tnew_item\t1"))
    config = dict(tiny, data_path=folder, benchmark_filename=["train", "valid", "test"])
    result = run_recbole("DERRD", config_dict=config, saved=False)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1


def test_run_script_resume_flag(tiny, workdir):
    config_file = workdir / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(dict(tiny, epochs=2, state="INFO")))
    base = [sys.executable, os.path.join(ROOT, "run_recbole_derrd.py"), "--model=DERRD", "--dataset=tiny",
            "--config_files=%s" % config_file, "--side_by_side=False"]
    env = dict(os.environ, PYTHONPATH=ROOT)
    first = subprocess.run(base, cwd=str(workdir), env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    last = glob.glob(os.path.join(tiny["checkpoint_dir"], "DERRD-*-last.pth"))[0]
    again = subprocess.run(base + ["--epochs=3", "--resume=%s" % last], cwd=str(workdir), env=env,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resume training from epoch 2" in again.stdout + again.stderr


def test_interrupted_teacher_training_resumes_where_it_stopped(tiny, tmp_path, monkeypatch):
    """A teacher training stopped mid-way keeps its checkpoints; the next run continues it and
    caches the very teacher an uninterrupted run trains (same weights, bit for bit)."""
    from recbole.trainer import Trainer

    settings = dict(tiny, t_epochs=4, epochs=1)
    run_recbole("DERRD", config_dict=dict(settings, teacher_cache_dir=str(tmp_path / "a")), saved=False)

    original = Trainer._train_epoch
    calls = []

    def interrupted(self, train_data, epoch_idx, *args, **kwargs):
        calls.append(epoch_idx)
        if len(calls) == 3:  # the teacher's third epoch: epochs 0 and 1 are evaluated and saved
            raise KeyboardInterrupt("stopped by the test")
        return original(self, train_data, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_recbole("DERRD", config_dict=dict(settings, teacher_cache_dir=str(tmp_path / "b")), saved=False)
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    left = glob.glob(str(tmp_path / "b" / "*.training-last.pth"))
    assert len(left) == 1 and load_checkpoint(left[0])["epoch"] == 1
    assert not glob.glob(str(tmp_path / "b" / "*[0-9a-f].pth"))  # no finished teacher yet

    epochs = []

    def recorded(self, train_data, epoch_idx, *args, **kwargs):
        epochs.append(epoch_idx)
        return original(self, train_data, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_epoch", recorded)
    run_recbole("DERRD", config_dict=dict(settings, teacher_cache_dir=str(tmp_path / "b")), saved=False)
    assert epochs == [2, 3, 0]  # the teacher's last two epochs, then the student's only one
    assert not glob.glob(str(tmp_path / "b" / "*.training*"))  # a finished training cleans up
    (straight,), (resumed,) = (glob.glob(str(tmp_path / d / "*[0-9a-f].pth")) for d in "ab")
    straight, resumed = load_checkpoint(straight), load_checkpoint(resumed)
    assert straight["epoch"] == resumed["epoch"]
    for name, tensor in straight["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
