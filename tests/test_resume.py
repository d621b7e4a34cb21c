"""Resuming never loses the best model, and a bad resume fails before anything trains."""

import glob
import os

import pytest
import torch

import recbole_derrd.teacher as teacher_module
from recbole_derrd.checkpoints import CheckpointError, load_checkpoint
from recbole_derrd.quick_start import run_recbole


def _best_and_last(folder, model):
    files = glob.glob(os.path.join(folder, "%s-*.pth" % model))
    last = [f for f in files if f.endswith("-last.pth")]
    best = [f for f in files if not f.endswith("-last.pth")]
    assert len(last) == 1 and len(best) == 1, files
    return best[0], last[0]


def _no_teacher_training(*args, **kwargs):
    raise AssertionError("the teacher must not be trained")


def test_resume_of_a_finished_run_keeps_its_best_model(tiny, monkeypatch):
    # a learning rate high enough that the last epoch is not the best one
    settings = dict(tiny, epochs=6, learning_rate=0.05, stopping_step=100)
    first = run_recbole("RRD", config_dict=settings, saved=True)
    best, last = _best_and_last(tiny["checkpoint_dir"], "RRD")
    best_epoch = load_checkpoint(best)["epoch"]
    before = {k: v.clone() for k, v in load_checkpoint(best)["state_dict"].items()}
    trained = []
    monkeypatch.setattr("recbole.trainer.Trainer._train_epoch",
                        lambda self, *a, **k: trained.append(1) or 0.0)
    again = run_recbole("RRD", config_dict=dict(settings, resume=last), saved=True)
    assert trained == []
    assert load_checkpoint(best)["epoch"] == best_epoch
    for name, tensor in load_checkpoint(best)["state_dict"].items():
        assert torch.equal(tensor, before[name]), name
    assert again["test_result"] == first["test_result"]
    assert again["best_valid_result"] == first["best_valid_result"]


def test_resume_of_an_early_stopped_run_trains_nothing(tiny, monkeypatch):
    settings = dict(tiny, epochs=30, learning_rate=0.05, stopping_step=0)
    first = run_recbole("RRD", config_dict=settings, saved=True)
    best, last = _best_and_last(tiny["checkpoint_dir"], "RRD")
    assert load_checkpoint(last)["epoch"] < 29  # early stopping ended it
    trained = []
    monkeypatch.setattr("recbole.trainer.Trainer._train_epoch",
                        lambda self, *a, **k: trained.append(1) or 0.0)
    again = run_recbole("RRD", config_dict=dict(settings, resume=last), saved=True)
    assert trained == [] and again["test_result"] == first["test_result"]


def test_bad_resume_fails_before_the_teacher_is_trained(tiny, tmp_path, monkeypatch):
    run_recbole("RRD", config_dict=dict(tiny, epochs=1), saved=True)
    _, rrd_last = _best_and_last(tiny["checkpoint_dir"], "RRD")
    fresh_cache = dict(tiny, teacher_cache_dir=str(tmp_path / "fresh"))
    monkeypatch.setattr(teacher_module, "train_teacher", _no_teacher_training)
    with pytest.raises(CheckpointError, match=r"resume checkpoint .*RRD-.*-last.pth was saved by model RRD; this run is DERRD"):
        run_recbole("DERRD", config_dict=dict(fresh_cache, resume=rrd_last), saved=True)
    with pytest.raises(CheckpointError, match="is a directory, not a checkpoint file"):
        run_recbole("DERRD", config_dict=dict(fresh_cache, resume=str(tmp_path)), saved=True)
    with pytest.raises(CheckpointError, match="checkpoint file not found: .*nope.pth"):
        run_recbole("DERRD", config_dict=dict(fresh_cache, resume=str(tmp_path / "nope.pth")), saved=True)


def test_resume_with_other_sizes_names_the_file_and_keys(tiny):
    run_recbole("RRD", config_dict=dict(tiny, epochs=1), saved=True)
    _, last = _best_and_last(tiny["checkpoint_dir"], "RRD")
    with pytest.raises(CheckpointError, match=r"RRD-.*-last.pth does not fit model RRD \(other shapes: student"):
        run_recbole("RRD", config_dict=dict(tiny, epochs=2, embedding_size=4, resume=last), saved=True)


def test_resume_whose_best_checkpoint_is_gone_is_refused(tiny):
    run_recbole("RRD", config_dict=dict(tiny, epochs=2), saved=True)
    best, last = _best_and_last(tiny["checkpoint_dir"], "RRD")
    os.remove(best)
    with pytest.raises(CheckpointError, match="points to its best checkpoint .*, which is missing"):
        run_recbole("RRD", config_dict=dict(tiny, epochs=3, resume=last), saved=True)


def _teacher_cache(folder):
    files = [f for f in glob.glob(os.path.join(folder, "*.pth")) if f[-20:-4].isalnum()]
    assert len(files) == 1, files
    return load_checkpoint(files[0])


def test_teacher_crash_before_the_cache_write_caches_the_best_teacher(tiny, tmp_path, monkeypatch):
    settings = dict(tiny, t_epochs=6, t_learning_rate=0.05, epochs=1)
    run_recbole("RRD", config_dict=dict(settings, teacher_cache_dir=str(tmp_path / "a")), saved=False)
    straight = _teacher_cache(str(tmp_path / "a"))

    real_write = teacher_module._write_cache

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed between the teacher's last epoch and the cache write")

    monkeypatch.setattr(teacher_module, "_write_cache", crash)
    with pytest.raises(KeyboardInterrupt):
        run_recbole("RRD", config_dict=dict(settings, teacher_cache_dir=str(tmp_path / "b")), saved=False)
    assert glob.glob(str(tmp_path / "b" / "*.training-last.pth"))
    monkeypatch.setattr(teacher_module, "_write_cache", real_write)
    trained = []
    original = teacher_module.train_teacher

    def record(*args, **kwargs):
        trained.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(teacher_module, "train_teacher", record)
    epochs = []
    real_epoch = __import__("recbole.trainer", fromlist=["Trainer"]).Trainer._train_epoch
    monkeypatch.setattr("recbole.trainer.Trainer._train_epoch",
                        lambda self, data, idx, *a, **k: epochs.append(idx) or real_epoch(self, data, idx, *a, **k))
    run_recbole("RRD", config_dict=dict(settings, teacher_cache_dir=str(tmp_path / "b")), saved=False)
    assert epochs == [0]  # only the student's epoch: the teacher's run had ended
    resumed = _teacher_cache(str(tmp_path / "b"))
    assert resumed["epoch"] == straight["epoch"]
    for name, tensor in straight["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name
    assert not glob.glob(str(tmp_path / "b" / "*.training*"))


def test_orphaned_teacher_last_checkpoint_is_moved_aside(tiny, tmp_path, caplog):
    settings = dict(tiny, t_epochs=3, epochs=1, teacher_cache_dir=str(tmp_path / "a"))
    run_recbole("RRD", config_dict=settings, saved=False)
    cache = [f for f in glob.glob(str(tmp_path / "a" / "*.pth"))][0]
    straight = load_checkpoint(cache)
    # an orphan: a "last" checkpoint whose best (.training) file is gone
    orphan = cache + ".training-last.pth"
    torch.save({"config": straight["config"], "epoch": 1, "state_dict": straight["state_dict"],
                "optimizer": {"state": {}, "param_groups": []}, "last": True, "cur_step": 0,
                "best_model_file": cache + ".training", "best_valid_score": 0.0}, orphan)
    os.remove(cache)
    run_recbole("RRD", config_dict=settings, saved=False)
    assert not os.path.exists(orphan) and glob.glob(orphan + ".unusable-*")
    again = load_checkpoint(cache)
    for name, tensor in straight["state_dict"].items():
        assert torch.equal(tensor, again["state_dict"][name]), name


def test_corrupt_cached_teacher_is_moved_aside_and_retrained(tiny, tmp_path):
    settings = dict(tiny, epochs=1, teacher_cache_dir=str(tmp_path / "a"))
    run_recbole("RRD", config_dict=settings, saved=False)
    cache = glob.glob(str(tmp_path / "a" / "*.pth"))[0]
    good = load_checkpoint(cache)
    with open(cache, "r+b") as handle:
        handle.truncate(300)
    run_recbole("RRD", config_dict=settings, saved=False)
    assert glob.glob(cache + ".corrupt-*")
    again = load_checkpoint(cache)
    for name, tensor in good["state_dict"].items():
        assert torch.equal(tensor, again["state_dict"][name]), name


def test_resume_never_writes_where_the_file_says(tiny, tmp_path):
    """A "last" checkpoint stores its best file's path; a crafted one could point anywhere.
    The best file is always the one beside the "last" file, named after it."""
    run_recbole("RRD", config_dict=dict(tiny, epochs=2, stopping_step=100), saved=True)
    best, last = _best_and_last(tiny["checkpoint_dir"], "RRD")
    state = load_checkpoint(last)
    elsewhere = tmp_path / "elsewhere" / "victim.pth"
    state["best_model_file"] = str(elsewhere)
    torch.save(state, last)
    result = run_recbole("RRD", config_dict=dict(tiny, epochs=4, stopping_step=100, resume=last), saved=True)
    assert not elsewhere.exists()
    assert result["saved_model_file"] == best


def test_time_to_best_counts_the_setup_and_continues_across_a_resume(tiny, monkeypatch):
    import time

    from recbole_derrd.terms.rrd import RRD

    plain_prepare = RRD.prepare
    monkeypatch.setattr(RRD, "prepare", lambda self, *a: time.sleep(0.3) or plain_prepare(self, *a))
    settings = dict(tiny, epochs=2, stopping_step=100)
    first = run_recbole("RRD", config_dict=settings, saved=True)
    # the terms' setup (here slowed to 0.3 s) is part of the method's time; the teacher's is not
    assert 0.3 <= first["seconds_to_best"] <= first["fit_seconds"] < 0.3 + 60
    _, last = _best_and_last(tiny["checkpoint_dir"], "RRD")
    saved = load_checkpoint(last)
    assert saved["fit_seconds"] == pytest.approx(first["fit_seconds"])
    assert saved["seconds_to_best"] == pytest.approx(first["seconds_to_best"])
    again = run_recbole("RRD", config_dict=dict(settings, epochs=4, resume=last), saved=True)
    assert again["fit_seconds"] > first["fit_seconds"]  # the clock continues, it does not restart
    assert again["seconds_to_best"] >= first["seconds_to_best"]
    stock = run_recbole("BPR", config_dict=dict(tiny, epochs=2), saved=True)
    assert 0 < stock["seconds_to_best"] <= stock["fit_seconds"]


def test_epoch_cost_and_valid_curve_continue_across_a_resume(tiny, monkeypatch):
    """seconds_per_epoch: training epochs only (their per-epoch term work included, evaluations
    not), averaged over every epoch the run has trained, across a resume; the validation curve
    likewise."""
    import time

    from recbole_derrd.terms.rrd import RRD

    plain_start = RRD.start_epoch
    monkeypatch.setattr(RRD, "start_epoch", lambda self, epoch: time.sleep(0.2) or plain_start(self, epoch))
    settings = dict(tiny, epochs=2, stopping_step=100)
    first = run_recbole("RRD", config_dict=settings, saved=True)
    assert 0.2 <= first["seconds_per_epoch"] < first["fit_seconds"] / 2
    _, last = _best_and_last(tiny["checkpoint_dir"], "RRD")
    saved = load_checkpoint(last)
    assert saved["epochs_trained"] == 2
    assert saved["train_epoch_seconds"] == pytest.approx(2 * first["seconds_per_epoch"])
    monkeypatch.setattr(RRD, "start_epoch", plain_start)
    again = run_recbole("RRD", config_dict=dict(settings, epochs=4, resume=last), saved=True)
    saved = load_checkpoint(_best_and_last(tiny["checkpoint_dir"], "RRD")[1])
    assert saved["epochs_trained"] == 4  # two before the resume, two after
    assert again["seconds_per_epoch"] == pytest.approx(saved["train_epoch_seconds"] / 4)
    assert again["seconds_per_epoch"] >= 0.2 / 2  # the slow first epochs still count
    # the validation curve: one [epoch, score, clock] per evaluation, continued across the resume
    assert [p[0] for p in first["valid_curve"]] == [0, 1] and [p[0] for p in again["valid_curve"]] == [0, 1, 2, 3]
    assert again["valid_curve"][:2] == first["valid_curve"]
    assert max(p[1] for p in again["valid_curve"]) == pytest.approx(again["best_valid_score"])
    assert [p[2] for p in again["valid_curve"]] == sorted(p[2] for p in again["valid_curve"])
    stock = run_recbole("BPR", config_dict=dict(tiny, epochs=2), saved=False)
    assert 0 < stock["seconds_per_epoch"] < stock["fit_seconds"]


def test_a_checkpoints_curve_and_counts_are_read_only_as_plain_numbers():
    """What a "last" checkpoint says about its run's history is bookkeeping: anything that is
    not plain numbers of the expected shape is dropped, never used."""
    from recbole_derrd.trainer import _count, _curve

    assert _curve([[0, 0.25, 1.5], [5, 0.3, 9]]) == [[0, 0.25, 1.5], [5, 0.3, 9.0]]
    for bad in ("[[0, 0.1, 1]]", [[0, "0.1", 1]], [[True, 0.1, 1]], [[-1, 0.1, 1]], [[0, 0.1]],
                [[0.5, 0.1, 1]], None, [(0, 0.1, 1)]):
        assert _curve(bad) == [], bad
    assert _count(3) == 3 and _count(-1) == _count(True) == _count("3") == _count(None) == 0
