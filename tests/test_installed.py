"""The installed wheel: property files found from anywhere, and the start-up hook that lets
RecBole's own unmodified run script use the plugin.

These run in subprocesses from a temporary directory (so the source tree is not on sys.path)
and need a NON-editable ``pip install .`` (the README's commands do one); otherwise skipped.
"""

import os
import subprocess
import sys
import sysconfig

import pytest
import yaml


PURELIB = sysconfig.get_paths()["purelib"]
INSTALLED = (os.path.isfile(os.path.join(PURELIB, "recbole_derrd_hook.pth"))
             and os.path.isdir(os.path.join(PURELIB, "recbole_derrd")))
pytestmark = pytest.mark.skipif(
    not INSTALLED, reason="needs a non-editable `pip install .` in this interpreter's site-packages")

# RecBole's own run_recbole.py (it is not in the recbole wheel): parse flags, call run().
RECBOLE_RUN_SCRIPT = '''
import argparse
from recbole.quick_start import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", "-m", type=str, default="BPR", help="name of models")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="name of datasets")
    parser.add_argument("--config_files", type=str, default=None, help="config files")
    parser.add_argument("--nproc", type=int, default=1, help="the number of process in this group")
    parser.add_argument("--ip", type=str, default="localhost", help="the ip of master node")
    parser.add_argument("--port", type=str, default="5678", help="the port of master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of jobs")
    parser.add_argument("--group_offset", type=int, default=0, help="the global rank offset of this group")
    args, _ = parser.parse_known_args()
    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    result = run(args.model, args.dataset, config_file_list=config_file_list, nproc=args.nproc,
                 world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset)
    import sys
    print("RESULT", dict(result["test_result"]))
    print("PLUGIN_LOADED", "recbole_derrd" in sys.modules)
'''


def clean_env():
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def python(args, cwd):
    return subprocess.run([sys.executable] + args, cwd=str(cwd), env=clean_env(), capture_output=True,
                          text=True, timeout=900)


def test_hook_is_cheap_and_installed(workdir):
    proc = python(["-c", "import sys; print(sorted(m for m in ('torch', 'recbole', 'recbole_derrd', "
                         "'recbole_derrd_hook') if m in sys.modules))"], workdir)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "['recbole_derrd_hook']"


def test_properties_found_from_the_wheel(workdir):
    proc = python(["-c", "import recbole_derrd, recbole_derrd.config as c; print(recbole_derrd.__file__); "
                         "print(c.properties_dir())"], workdir)
    assert proc.returncode == 0, proc.stderr
    package_file, properties = proc.stdout.strip().splitlines()[-2:]
    assert package_file.startswith(PURELIB) and properties.startswith(PURELIB)
    for name in ("distillation.yaml", "model/DE.yaml", "model/RRD.yaml", "model/DERRD.yaml",
                 "model/RD.yaml", "model/CD.yaml", "model/RCEKD.yaml", "tuning/DERRD.hyper", "tuning/CD.hyper",
                 "tuning/RCEKD.hyper", "tuning/RD.hyper", "tuning/DE.hyper", "tuning/RRD.hyper", "tuning/DEIRRRD.hyper",
                 "protocol/loo_uni499.yaml", "protocol/loo_full.yaml"):
        assert os.path.isfile(os.path.join(properties, name)), name


@pytest.mark.parametrize("model", ["DERRD", "RD"])
def test_recbole_run_script_finds_plugin_without_import(tiny, workdir, model):
    script = workdir / "run_recbole.py"
    script.write_text(RECBOLE_RUN_SCRIPT)
    config_file = workdir / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(dict(tiny, epochs=1)))
    proc = python([str(script), "--model=%s" % model, "--dataset=tiny", "--config_files=%s" % config_file,
                   "--de_weight=0.02"],
                  workdir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "RESULT {'hit@5'" in proc.stdout
    assert "PLUGIN_LOADED True" in proc.stdout
    assert os.path.isdir(os.path.join(tiny["checkpoint_dir"], "teachers"))
