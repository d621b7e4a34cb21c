"""Concurrent runs: one teacher training per cache entry, and checkpoint names that never collide."""

import glob
import os
import shutil
import subprocess
import sys
import time

import filelock
import yaml

from recbole_derrd.quick_start import run_recbole

from conftest import ROOT

RUN = r"""
import sys, yaml
import recbole_derrd.teacher as teacher

def refuse(*args, **kwargs):
    raise SystemExit("the second run trained the teacher instead of waiting for the cache")

if sys.argv[2] == "reuse-only":
    teacher.train_teacher = refuse
from recbole_derrd.quick_start import run_recbole
result = run_recbole("RRD", config_dict=yaml.safe_load(open(sys.argv[1])), saved=False)
print("DONE", result["test_result"]["ndcg@10"], flush=True)
"""


def test_second_run_waits_for_the_teacher_and_reuses_it(tiny, workdir):
    """Deterministic: the test holds the cache lock (as a first run training the teacher would),
    starts a second run, sees it wait, writes the cache entry, then releases the lock."""
    settings = dict(tiny, epochs=1, state="WARNING")
    script = workdir / "run.py"
    script.write_text(RUN)
    env = dict(os.environ, PYTHONPATH=ROOT)

    def config_file(name):
        path = workdir / (name + ".yaml")
        path.write_text(yaml.safe_dump(dict(settings, teacher_cache_dir=str(workdir / name))))
        return str(path)

    # the first run, in its own process like the second, trains and caches the teacher
    first = subprocess.run([sys.executable, str(script), config_file("first"), "train"], cwd=str(workdir),
                           env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    (entry,) = glob.glob(str(workdir / "first" / "*.pth"))
    target = workdir / "second" / os.path.basename(entry)
    target.parent.mkdir()
    lock = filelock.FileLock(str(target) + ".lock")
    lock.acquire()
    try:
        proc = subprocess.Popen([sys.executable, str(script), config_file("second"), "reuse-only"],
                                cwd=str(workdir), env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        seen = []
        deadline = time.time() + 300
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            if "waiting for it" in line:
                break
        assert "waiting for it" in "".join(seen), "".join(seen)[-3000:]
        shutil.copy(entry, target)  # the "first run" finishes its teacher
        shutil.copy(entry + ".json", str(target) + ".json")
    finally:
        lock.release()
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, ("".join(seen) + out)[-3000:]
    assert "DONE" in out


def test_lock_of_a_killed_process_does_not_block(tmp_path):
    path = str(tmp_path / "entry.pth.lock")
    holder = subprocess.Popen([sys.executable, "-c",
                               "import filelock, sys, time; l = filelock.FileLock(sys.argv[1]); "
                               "l.acquire(); print('held', flush=True); time.sleep(120)", path],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    lock = filelock.FileLock(path)
    lock.acquire(timeout=10)  # raises filelock.Timeout if the dead holder still blocked it
    lock.release()


def test_runs_started_in_the_same_second_get_their_own_checkpoints(tiny, monkeypatch):
    """RecBole names checkpoints <Model>-<time to the second>.pth; ours add a random token."""
    import recbole.trainer.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "get_local_time", lambda: "Dec-01-2026_12-00-00")
    first = run_recbole("BPR", config_dict=dict(tiny, epochs=2), saved=True)
    second = run_recbole("BPR", config_dict=dict(tiny, epochs=2, learning_rate=0.01), saved=True)
    assert first["saved_model_file"] != second["saved_model_file"]
    names = sorted(os.path.basename(f) for f in glob.glob(os.path.join(tiny["checkpoint_dir"], "BPR-*.pth")))
    assert len(names) == 4, names  # two best and two last checkpoints
    assert all(n.startswith("BPR-Dec-01-2026_12-00-00-") for n in names)


def test_cache_key_does_not_depend_on_configs_built_before(tiny):
    """RecBole extends its module-level dataset key list whenever a Config is built on a dataset
    with a yaml (ml-100k): the teacher's cache key must not follow it."""
    from recbole.config import Config
    from recbole.utils import dataset_arguments

    from recbole_derrd.teacher import DATASET_KEYS, pristine_dataset_arguments

    before = set(DATASET_KEYS)
    Config(model="BPR", dataset="ml-100k", config_dict={"state": "ERROR"})
    assert set(dataset_arguments) > before  # RecBole's list grew ...
    assert set(pristine_dataset_arguments()) == before  # ... ours did not
