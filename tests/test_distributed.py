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


def one_and_two_ranks(workdir, config):
    """Test results of the same run in one process and on two ranks; checks what both share."""
    single = run_script(workdir, dict(config, checkpoint_dir=str(workdir / "single")), 1)
    double = run_script(workdir, dict(config, checkpoint_dir=str(workdir / "ddp")), 2)
    assert set(double) == set(single)
    for key, value in double.items():
        assert 0.0 <= value <= 1.0, key
    # Two ranks train with half the batches each: close, not identical.
    assert abs(double["ndcg@10"] - single["ndcg@10"]) < 0.1
    teachers = os.listdir(workdir / "ddp" / "teachers")
    assert sum(name.endswith(".pth") for name in teachers) == 1  # rank 0 alone wrote the cache
    return single, double


def test_derrd_with_two_cpu_ranks_is_sane(tiny, workdir):
    single, double = one_and_two_ranks(workdir, dict(tiny, epochs=4, t_epochs=4, ip="127.0.0.1"))
    assert abs(double["hit@10"] - single["hit@10"]) < 0.15


def test_a_sequential_pair_with_two_cpu_ranks_is_sane(tiny_seq, workdir):
    """SASRec -> GRU4Rec under RecBole's sequential protocol, two ranks: the prefix table and the
    per-rank batches of prefixes work as in one process (close, not identical: half the batches
    each)."""
    one_and_two_ranks(workdir, dict(tiny_seq, epochs=3, t_epochs=3, ip="127.0.0.1", student_model="GRU4Rec"))


EVALUATE = r'''
import json, sys, yaml
import torch.multiprocessing as mp
import recbole_derrd  # registers the plugin in every spawned rank


def evaluate(rank, settings, nproc, port, mode):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed
    from recbole_derrd.trainer import safe_trainer_class

    settings = dict(settings, eval_args=dict(settings["eval_args"], mode=mode))
    if nproc > 1:
        settings.update(local_rank=rank, world_size=nproc, nproc=nproc, ip="127.0.0.1", port=port, offset=0)
    config = Config(model=settings["model"], config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    _, _, test_data = data_preparation(config, dataset)
    model = get_model(config["model"])(config, test_data._dataset)
    trainer = safe_trainer_class(get_trainer(config["MODEL_TYPE"], config["model"]))(config, model)
    init_seed(config["seed"], config["reproducibility"])
    result = trainer.evaluate(test_data, model_file=settings["model_file"])
    with open("result-%d.json" % rank, "w") as handle:  # ranks share stdout: one file each
        json.dump(dict(result), handle)


if __name__ == "__main__":
    settings = yaml.safe_load(open(sys.argv[1]))
    nproc, port, mode = int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if nproc == 1:
        evaluate(0, settings, 1, port, mode)
    else:
        mp.spawn(evaluate, args=(settings, nproc, port, mode), nprocs=nproc, join=True)
'''


def evaluate_script(workdir, settings, nproc, mode):
    script = workdir / "ddp_eval.py"
    script.write_text(EVALUATE)
    config_file = workdir / "eval.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    proc = subprocess.run([sys.executable, str(script), str(config_file), str(nproc), free_port(), mode],
                          cwd=str(workdir), capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONPATH=ROOT, CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = {}
    for rank in range(nproc):
        path = workdir / ("result-%d.json" % rank)
        results[rank] = json.loads(path.read_text())
        path.unlink()
    return results


def test_two_ranks_evaluate_a_checkpoint_exactly_like_one_process(tiny, workdir):
    """One trained checkpoint, tested by one process and by two gloo ranks: the same metrics,
    on every rank, for sampled negatives (uni50) and full ranking."""
    from recbole_derrd.quick_start import run_recbole

    settings = dict(tiny, epochs=3)
    # 61 users: an odd count, so RecBole's DistributedSampler pads one rank's share
    trained = run_recbole("BPR", config_dict=settings, saved=True)
    settings.update(model="BPR", model_file=trained["saved_model_file"])
    for mode in ("uni50", "full"):
        single = evaluate_script(workdir, settings, 1, mode)[0]
        double = evaluate_script(workdir, settings, 2, mode)
        assert double[0] == single and double[1] == single, (mode, single, double)
