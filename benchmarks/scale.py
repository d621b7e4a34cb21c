"""Benchmark 2 + 4: teacher top-N and one DE-RRD epoch at scale, on synthetic power-law data.

For each interaction count (default 1M, 3M, 10M over 200,000 users x 100,000 items), generates
the data set once (``recbole_derrd.harness.synthetic``, seeded) and, in a fresh process per size so
that peak memory is its own, measures with BPR 64 -> BPR 16:

* the teacher's top-N (N = 500, chunked): time and the growth of peak RSS while it runs;
* one DE-RRD training epoch (tau = 1, the dense and most expensive DE path): the RRD
  sampling hook plus every batch with the trainer's fused Adam; evaluation excluded;
* the peak RSS of the whole process (RecBole's data set and loaders included).

The teacher is an untrained BPR-64 shell (its weights do not change the cost).  The CiteULike
row measures the same top-N on the paper's split (BPR-200 teacher) for comparison.

    python benchmarks/scale.py                       # 1M, 3M, 10M
    python benchmarks/scale.py --interactions 1e6    # one size
"""

import argparse
import os
import resource
import sys
import tempfile
import threading
import time

import torch

from _common import (SHARED_DATA, add_common_arguments, child_result, citeulike_config, environment_line,
                     print_result, record, record_allowed)

HERE = os.path.dirname(os.path.abspath(__file__))


def peak_rss_gb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2  # KiB on Linux


def current_rss_gb():
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1024 ** 3


class RssSampler(threading.Thread):
    """Highest resident set size seen while a step runs (polled every 5 ms)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = current_rss_gb()
        self._done = threading.Event()

    def run(self):
        while not self._done.wait(0.005):
            self.peak = max(self.peak, current_rss_gb())

    def stop(self):
        self._done.set()
        self.join()
        return max(self.peak, current_rss_gb())


def child(args):
    """Runs in its own process: prints one JSON line of measurements."""
    sys.argv = sys.argv[:1]
    import recbole_derrd  # noqa: F401
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    from recbole_derrd.distillation import teacher_top_n
    from recbole_derrd.distillation_trainer import fused_adam

    torch.set_num_threads(args.threads)
    if args.dataset == "citeulike":
        config = citeulike_config("DERRD", args.data_path, 1024)
    else:
        config = Config(model="DERRD", config_dict={
            "dataset": args.dataset, "data_path": args.data_path,
            "load_col": {"inter": ["user_id", "item_id"]}, "state": "ERROR", "show_progress": False,
            "eval_args": {"split": {"LS": "valid_and_test"}, "order": "RO", "mode": "full"},
            "embedding_size": 16, "t_embedding_size": 64, "train_batch_size": 1024})
    init_seed(config["seed"], config["reproducibility"])
    start = time.perf_counter()
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model("DERRD")(config, train._dataset)
    load_time = time.perf_counter() - start
    train_matrix = train._dataset.inter_matrix(form="csr").astype("float32")
    rss_before = current_rss_gb()
    sampler = RssSampler()
    sampler.start()
    start = time.perf_counter()
    rrd = model.term("RRD")
    top = teacher_top_n(model.teacher_adapter.all_scores, train_matrix, rrd.top_n)
    top_time = time.perf_counter() - start
    rss_top = sampler.stop()
    result = {"users": int(train._dataset.user_num - 1), "items": int(train._dataset.item_num - 1),
              "train": int(train._dataset.inter_num), "load_s": load_time, "top_n_s": top_time,
              "top_n_rss_growth_gb": rss_top - rss_before, "top_n_table_gb": top.nbytes / 1024 ** 3}
    if not args.top_n_only:
        from recbole_derrd.distillation import RRDSampler

        model.teacher_ready = True
        # the top-N was just timed: hand it to the RRD term instead of computing it again
        rrd.sampler = RRDSampler(top, train_matrix, rrd.k, rrd.l, rrd.temperature,
                                 mode=rrd.sampling, seed=config["seed"])
        rrd.device = model.device
        model.prepare_terms(train)  # DE has nothing to precompute; RRD is already prepared
        del top
        optimizer = fused_adam(torch.optim.Adam(model.parameters(), lr=1e-3))
        start = time.perf_counter()
        model.start_epoch(0)
        hook = time.perf_counter() - start
        batches = 0
        for batch in train:
            loss = sum(model.calculate_loss(batch))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            batches += 1
        result.update(epoch_s=time.perf_counter() - start, hook_s=hook, batches=batches)
    result["peak_rss_gb"] = peak_rss_gb()
    print_result(result)


def main(argv=None):
    parser = argparse.ArgumentParser(description="teacher top-N and one DE-RRD epoch at scale")
    parser.add_argument("--interactions", default="1e6,3e6,1e7")
    parser.add_argument("--users", type=int, default=200000)
    parser.add_argument("--items", type=int, default=100000)
    parser.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "recbole_derrd_synthetic"))
    add_common_arguments(parser, data_path=False)
    parser.add_argument("--skip_citeulike", action="store_true")
    # internal: the per-size child process
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--dataset", help=argparse.SUPPRESS)
    parser.add_argument("--data_path", help=argparse.SUPPRESS)
    parser.add_argument("--top_n_only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    from recbole_derrd.harness.synthetic import generate, write_atomic

    allowed = record_allowed(args)
    env = environment_line("python benchmarks/scale.py --interactions %s --users %d --items %d"
                           % (args.interactions, args.users, args.items))
    runs = []
    if not args.skip_citeulike and os.path.isdir(os.path.join(SHARED_DATA, "citeulike")):
        runs.append(("CiteULike (BPR-200 teacher)", "citeulike", SHARED_DATA, True))
    for text in args.interactions.split(","):
        count = int(float(text))
        name = "synth_%du_%di_%d" % (args.users, args.items, count)
        if not os.path.exists(os.path.join(args.data_dir, name, name + ".inter")):
            print("generating %s ..." % name, flush=True)
            write_atomic(args.data_dir, name, *generate(args.users, args.items, count, seed=0))
        runs.append(("synthetic %gM" % (count / 1e6), name, args.data_dir, False))
    rows = []
    for label, dataset, data_path, top_only in runs:
        command = [sys.executable, os.path.abspath(__file__), "--child", "--dataset", dataset,
                   "--data_path", data_path, "--threads", str(args.threads)] + (["--top_n_only"] if top_only else [])
        result = child_result(command, label)
        rows.append((label, result))
        print(label, result, flush=True)
    lines = [env, "", "| data | users x items | train interactions | top-N (s) | RSS growth during top-N, peak (GB) "
             "| top-N table (GB) | DE-RRD epoch (s) | of which RRD sampling (s) | s per 1M interactions "
             "| process peak RSS (GB) |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, r in rows:
        epoch = r.get("epoch_s")
        lines.append("| %s | %d x %d | %d | %.1f | %.2f | %.2f | %s | %s | %s | %.2f |" % (
            label, r["users"], r["items"], r["train"], r["top_n_s"], r["top_n_rss_growth_gb"],
            r["top_n_table_gb"], "%.1f" % epoch if epoch else "-", "%.2f" % r["hook_s"] if epoch else "-",
            "%.1f" % (epoch / r["train"] * 1e6) if epoch else "-", r["peak_rss_gb"]))
    lines += ["", "BPR 64 -> BPR 16 (CiteULike row: top-N only, BPR-200 teacher), N = 500, K = L = 40, "
              "M = 30 experts, tau = 1 (dense DE), batch 1024, fused Adam; untrained teacher shell; "
              "evaluation excluded. Each size runs in its own process."]
    record("scale.py", lines, enabled=allowed)


if __name__ == "__main__":
    main()
