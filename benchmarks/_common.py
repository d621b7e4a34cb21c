"""Shared helpers of the benchmark scripts: environment line, matmul rate, RESULTS.md."""

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # benchmark this checkout's code
SHARED_DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "datasets"))


def median_seconds(fn, repeats=5, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate(size=2048, repeats=5):
    """Median FLOP/s of a size^3 fp32 matmul in this process, with its thread count."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    return 2.0 * size ** 3 / median_seconds(lambda: torch.mm(a, b, out=out), repeats)


def cpu_model():
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_line(command):
    load = os.getloadavg()
    return ("`%s` on %s (%s), torch %s, %d threads, load average: %.2f %.2f %.2f"
            % (command, platform.node() or "?", cpu_model(), torch.__version__, torch.get_num_threads(), *load))


def add_common_arguments(parser, data_path=True):
    """The flags every benchmark takes: where the data is, threads, and whether to record."""
    if data_path:
        parser.add_argument("--data_path", default=SHARED_DATA)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no_record", action="store_true", help="print only")
    parser.add_argument("--force", action="store_true", help="run on a busy machine, never record")
    parser.add_argument("--max_load", type=float, default=0.7)


def require_citeulike(data_path):
    if not os.path.isdir(os.path.join(data_path, "citeulike")):
        sys.exit("CiteULike not found under %s (see ../shared/datasets/README.md)" % data_path)


def record_allowed(args):
    """Whether the result may go to RESULTS.md; call before measuring (exits on a busy machine)."""
    return not args.no_record and check_quiet(args.max_load, args.force)


def check_quiet(max_load, force):
    """Refuse to record when the machine is busy (the 1-minute load average)."""
    load = os.getloadavg()[0]
    if load > max_load and not force:
        sys.exit("load average %.2f > %.2f: something else is running; wait, or pass --force "
                 "(the result is then printed but not recorded)" % (load, max_load))
    return load <= max_load


def record(title, lines, enabled=True):
    text = "\n".join(["## %s, %s" % (title, datetime.datetime.now().strftime("%Y-%m-%d %H:%M")), ""]
                     + lines) + "\n"
    print(text)
    if enabled:
        with open(os.path.join(HERE, "RESULTS.md"), "a", encoding="utf-8") as handle:
            handle.write("\n" + text)


def citeulike_config(model_name, data_path, batch_size, **extra):
    """RecBole Config for the paper's CiteULike split, BPR 200 -> BPR 20 defaults."""
    from recbole.config import Config

    settings = {
        "data_path": data_path, "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id"]}, "train_batch_size": batch_size,
        "embedding_size": 20, "t_embedding_size": 200, "state": "ERROR", "show_progress": False,
        "eval_args": {"mode": "uni499", "order": "RO", "group_by": "user"},
    }
    settings.update(extra)
    return Config(model=model_name, dataset="citeulike", config_dict=settings)


def child_result(command, label):
    """Run one measurement in a fresh process (its own peak memory and allocator state) and
    return the JSON it prints on a ``RESULT `` line."""
    output = subprocess.run(command, capture_output=True, text=True, cwd=tempfile.gettempdir())
    line = [x for x in output.stdout.splitlines() if x.startswith("RESULT ")]
    if output.returncode or not line:
        sys.exit("%s failed:\n%s" % (label, output.stderr[-3000:]))
    return json.loads(line[0][len("RESULT "):])


def print_result(result):
    print("RESULT " + json.dumps(result), flush=True)
