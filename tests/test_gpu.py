"""The plugin on a CUDA GPU, through RecBole's real pipeline (skipped where no GPU is visible).

The rest of the suite runs on the CPU everywhere (conftest hides the GPUs: its hand-computed
values are CPU values, and its unit tests build models the way RecBole's quick start does
before moving them to the device).  These tests start a fresh interpreter with the GPUs
visible, so they exercise what a GPU user runs: every method trained and evaluated on the GPU,
teachers of other kinds (a graph model, a non-neural one, a sequential one), a resume whose
checkpoint is mapped onto the GPU, checkpoints carried between the GPU and the CPU, serving.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import GPUS_AT_START, ROOT, gpu_visible_in

GPU_ENV = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
if GPUS_AT_START is not None:
    GPU_ENV["CUDA_VISIBLE_DEVICES"] = GPUS_AT_START  # the GPUs the user chose, if any


def _gpu_visible():
    return shutil.which("nvidia-smi") is not None and gpu_visible_in(GPU_ENV)


pytestmark = pytest.mark.skipif(not _gpu_visible(), reason="no CUDA GPU visible")

SCRIPT = r'''
import glob, json, sys, yaml
import torch
import recbole_derrd
from recbole_derrd.quick_start import load_data_and_model, run_recbole
from recbole_derrd.checkpoints import load_checkpoint
from recbole_derrd.trainer import restore_random_states

settings = yaml.safe_load(open(sys.argv[1]))
case = sys.argv[2]
report = {}

def on_gpu(result):
    return {"ndcg@10": float(result["test_result"]["ndcg@10"]),
            "valid": float(result["best_valid_result"]["ndcg@10"])}

if case == "methods":
    runs = [("DERRD", {}), ("RRD", {}), ("DE", {}), ("RD", {}), ("CD", {}), ("IRRRD", {"ir_top_n": 5, "ir_k": 3, "ir_l": 3}),
            ("HTD", {"htd_num_groups": 3}), ("RCEKD", {"rce_k": 5, "rce_l": 4, "rce_top_m": 20}),
            ("DERRD", {"teacher_model": "LightGCN", "t_n_layers": 2}),
            ("RRD", {"teacher_model": "EASE"})]
    for model, extra in runs:
        torch.cuda.reset_peak_memory_stats()
        result = run_recbole(model, config_dict=dict(settings, **extra), saved=False)
        row = on_gpu(result)
        row["gpu_bytes"] = torch.cuda.max_memory_allocated()
        report["%s %s" % (model, extra.get("teacher_model", "BPR"))] = row
elif case == "sequential":
    torch.cuda.reset_peak_memory_stats()
    result = run_recbole("DERRD", config_dict=settings, saved=False)
    report["DERRD SASRec"] = dict(on_gpu(result), gpu_bytes=torch.cuda.max_memory_allocated())
elif case == "resume":
    straight = run_recbole("RRD", config_dict=dict(settings, epochs=4, checkpoint_dir=settings["checkpoint_dir"] + "/a"), saved=True)
    short = dict(settings, epochs=2, checkpoint_dir=settings["checkpoint_dir"] + "/b")
    run_recbole("RRD", config_dict=short, saved=True)
    last = glob.glob(short["checkpoint_dir"] + "/RRD-*-last.pth")[0]
    states = load_checkpoint(last, map_location=torch.device("cuda"))["random_states"]
    restore_random_states(states)
    report["cuda_state_saved"] = "cuda" in states
    report["cuda_state_restored"] = bool(torch.equal(torch.cuda.get_rng_state(), states["cuda"][0].cpu()))
    resumed = run_recbole("RRD", config_dict=dict(short, epochs=4, resume=last), saved=True)
    report["straight"], report["resumed"] = on_gpu(straight), on_gpu(resumed)
    report["model_file"] = straight["saved_model_file"]
elif case == "load":  # a checkpoint written by another process, loaded and served here
    from recbole.data.interaction import Interaction
    from recbole_derrd.serving.inference import recommend
    config, model, dataset, train, valid, test = load_data_and_model(sys.argv[3])
    users = torch.arange(1, 20, device=config["device"])
    scores, items = recommend(model.student, users, k=10)
    with torch.no_grad():
        full = model.student.full_sort_predict(Interaction({"user_id": users}).to(config["device"])).view(len(users), -1)
    full[:, 0] = -torch.inf
    report = {"device": str(config["device"]), "parameter_device": str(next(model.parameters()).device),
              "top10_equal": bool(torch.equal(items.cpu(), torch.topk(full, 10, dim=1).indices.cpu()))}
print("REPORT " + json.dumps(report))
'''


def run_case(workdir, settings, case, *arguments, env=GPU_ENV):
    script = workdir / "gpu_case.py"
    script.write_text(SCRIPT)
    config_file = workdir / ("%s.yaml" % case)
    config_file.write_text(yaml.safe_dump(settings))
    proc = subprocess.run([sys.executable, str(script), str(config_file), case, *arguments], cwd=str(workdir),
                          capture_output=True, text=True, timeout=900, env=dict(env, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [row for row in proc.stdout.splitlines() if row.startswith("REPORT ")][-1]
    return json.loads(line[len("REPORT "):])


def test_every_method_and_teacher_kind_trains_on_the_gpu(tiny, workdir):
    report = run_case(workdir, dict(tiny, teacher_cache_dir=str(workdir / "teachers")), "methods")
    assert len(report) == 10
    for name, row in report.items():
        assert 0.0 < row["ndcg@10"] <= 1.0 and 0.0 < row["valid"] <= 1.0, name
        assert row["gpu_bytes"] > 0, name  # the run's tensors lived on the GPU


def test_a_sequential_pair_trains_on_the_gpu(tiny_seq, workdir):
    row = run_case(workdir, dict(tiny_seq, teacher_cache_dir=str(workdir / "teachers")), "sequential")["DERRD SASRec"]
    assert 0.0 < row["ndcg@10"] <= 1.0 and row["gpu_bytes"] > 0


def test_resume_and_checkpoints_between_gpu_and_cpu(tiny, workdir):
    """A "last" checkpoint loaded onto the GPU restores the CPU and CUDA random states (torch
    takes RNG states as CPU tensors only); the resumed run finishes its epochs; the best
    checkpoint written on the GPU loads and serves on the GPU and in a process without one."""
    report = run_case(workdir, dict(tiny, stopping_step=100, teacher_cache_dir=str(workdir / "teachers")), "resume")
    assert report["cuda_state_saved"] and report["cuda_state_restored"]
    assert 0.0 < report["resumed"]["ndcg@10"] <= 1.0
    for env, device in ((GPU_ENV, "cuda"), (dict(GPU_ENV, CUDA_VISIBLE_DEVICES=""), "cpu")):
        loaded = run_case(workdir, tiny, "load", report["model_file"], env=env)
        assert loaded["device"].startswith(device) and loaded["parameter_device"].startswith(device)
        assert loaded["top10_equal"]
