"""RecBole's distributed path (``run(..., nproc=2)``) on the CPU with the gloo backend."""

import json
import os
import socket
import subprocess
import sys

import yaml

from conftest import ROOT

# A script, not pytest itself: spawned ranks re-import __main__, which imports the plugin.
SCRIPT = r'''
import json, sys, yaml
import recbole_derrd  # registers the plugin in every spawned rank
from recbole.quick_start import run

if __name__ == "__main__":
    config = yaml.safe_load(open(sys.argv[1]))
    result = run("DERRD", "tiny", config_dict=config, nproc=int(sys.argv[2]), port=sys.argv[3])
    print("RESULT " + json.dumps(dict(result["test_result"])))
'''


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def run_script(workdir, config, nproc):
    script = workdir / "ddp_run.py"
    script.write_text(SCRIPT)
    config_file = workdir / ("ddp-%d.yaml" % nproc)
    config_file.write_text(yaml.safe_dump(config))
    proc = subprocess.run([sys.executable, str(script), str(config_file), str(nproc), free_port()],
                          cwd=str(workdir), capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = [row for row in proc.stdout.splitlines() if row.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_derrd_with_two_cpu_ranks_is_sane(tiny, workdir):
    config = dict(tiny, epochs=4, t_epochs=4, ip="127.0.0.1")
    single = run_script(workdir, dict(config, checkpoint_dir=str(workdir / "single")), 1)
    double = run_script(workdir, dict(config, checkpoint_dir=str(workdir / "ddp")), 2)
    assert set(double) == set(single)
    for key, value in double.items():
        assert 0.0 <= value <= 1.0, key
    # Two ranks train with half the batches each and their own teacher: close, not identical.
    assert abs(double["ndcg@10"] - single["ndcg@10"]) < 0.1
    assert abs(double["hit@10"] - single["hit@10"]) < 0.15
    teachers = os.listdir(workdir / "ddp" / "teachers")
    assert sum(name.endswith(".pth") for name in teachers) == 1  # rank 0 alone wrote the cache
