"""The command line: a user error is one line on stderr and exit status 2, never a traceback."""

import os
import subprocess
import sys

import yaml

from conftest import ROOT


def run_script(workdir, config, *flags):
    config_file = workdir / "cli.yaml"
    config_file.write_text(yaml.safe_dump(config))
    command = [sys.executable, os.path.join(ROOT, "run_recbole_derrd.py"), "--dataset=tiny",
               "--config_files=%s" % config_file, "--side_by_side=False"] + list(flags)
    return subprocess.run(command, cwd=str(workdir), capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=ROOT))


def _one_line_error(proc, expected):
    errors = [line for line in proc.stderr.splitlines() if line.startswith("recbole-derrd: error:")]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert len(errors) == 1 and expected in errors[0], proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr


def test_bad_value_is_one_line_and_exit_2(tiny, workdir):
    proc = run_script(workdir, tiny, "--model=DERRD", "--rrd_k=0")
    _one_line_error(proc, "rrd_k=0 must be a positive integer")


def test_refused_checkpoint_is_one_line_and_exit_2(tiny, workdir):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import crafted_checkpoints

    marker = workdir / "pwned"
    evil = crafted_checkpoints.write_checkpoint(
        str(workdir / "evil.pth"), crafted_checkpoints.payloads(str(marker))["config_eval"])
    proc = run_script(workdir, tiny, "--model=RRD", "--teacher_checkpoint=%s" % evil)
    _one_line_error(proc, "refusing checkpoint %s" % evil)
    assert not marker.exists()


def test_unknown_model_is_named(tiny, workdir):
    proc = run_script(workdir, tiny, "--model=DERD")
    _one_line_error(proc, "--model=DERD is not a RecBole or plugin model; did you mean")


def test_debug_keeps_the_traceback(tiny, workdir):
    proc = run_script(workdir, tiny, "--model=DERRD", "--rrd_k=0", "--debug")
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "rrd_k=0" in proc.stderr
