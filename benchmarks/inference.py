"""Benchmark 3: inference cost of the teacher and of students at phi = 1.0, 0.5, 0.1.

BPR models shaped like the paper's CiteULike setting (teacher 200-dim; students 200, 100, 20
dims), scored with the plugin's inference helper (:func:`recbole_derrd.serving.inference.recommend`:
blocked scoring + running top-k, training items masked):

(a) one request: one user against the full catalogue, top-20; median latency over users;
(b) batch: top-20 for every user; throughput, and the split between scoring and top-k
    selection (top-k costs the same for every dimension, which bounds the batch speed-up).

A plain ``scores = U @ V.T; topk`` is timed beside (b) for reference.  Each model runs in its
own process: after a large score matrix is freed, glibc raises its mmap threshold and later
mid-size allocations page-fault again, which slowed the next model by up to 1.7x when they
shared a process.  Latency does not depend on the weights, so the models have the right
shape but untrained weights; accuracy comes only
from trained runs (``--accuracy results/<file>.json`` mapping phi to the student's accuracy
as a fraction of the teacher's), otherwise it is reported as not measured.

    python benchmarks/inference.py
"""

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from _common import (add_common_arguments, child_result, citeulike_config, environment_line,
                     median_seconds, print_result, record, record_allowed, require_citeulike)

PHIS = (1.0, 0.5, 0.1)
TEACHER_DIM = 200



def child(args):
    """One model's measurements, printed as a JSON line (runs in its own process)."""
    import recbole_derrd  # noqa: F401
    from recbole.data import create_dataset
    from recbole.model.general_recommender import BPR

    from recbole_derrd.serving.inference import default_user_block, recommend

    torch.set_num_threads(args.threads)
    config = citeulike_config("BPR", args.data_path, 1024)
    dataset = create_dataset(config)
    exclude = dataset.inter_matrix(form="csr")
    all_users = torch.arange(1, dataset.user_num)
    rng = np.random.default_rng(0)
    request_users = rng.choice(np.arange(1, dataset.user_num), size=args.requests, replace=False)
    dim = args.child_dim
    config["embedding_size"] = dim
    model = BPR(config, dataset).eval()
    params = sum(p.numel() for p in model.parameters())
    recommend(model, [1], args.k, exclude)  # warm-up
    latencies = []
    for user in request_users:
        start = time.perf_counter()
        recommend(model, [int(user)], args.k, exclude)
        latencies.append(time.perf_counter() - start)
    batch = median_seconds(lambda: recommend(model, all_users, args.k, exclude), repeats=3)
    users_t = model.user_embedding.weight[1:].detach()
    items_t = model.item_embedding.weight.detach()
    # the batch path's two halves, with its block size and layout (see top_k_items)
    block = default_user_block(dim)
    items_tr = items_t.t().contiguous()
    buffer = torch.empty(block, items_t.shape[0])
    starts = range(0, len(users_t) - block + 1, block)
    scoring = median_seconds(lambda: [torch.mm(users_t[s:s + block], items_tr, out=buffer)
                                      for s in starts], repeats=3)
    topk = median_seconds(lambda: [torch.topk(buffer, args.k, dim=1) for _ in starts], repeats=3)

    def plain():
        scores = users_t @ items_t.t()
        coo = exclude[1:].tocoo()
        scores[torch.as_tensor(coo.row, dtype=torch.long), torch.as_tensor(coo.col, dtype=torch.long)] = -torch.inf
        scores[:, 0] = -torch.inf
        return torch.topk(scores, args.k, dim=1)

    naive = median_seconds(plain, repeats=3)  # last: its big allocations must not affect the rest
    print_result({"params": params, "latency": float(np.median(latencies)), "batch": batch,
                  "scoring": scoring, "topk": topk, "plain": naive,
                  "users": int(dataset.user_num - 1), "items": int(dataset.item_num - 1)})

def main(argv=None):
    parser = argparse.ArgumentParser(description="teacher vs student inference cost")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--accuracy", help="JSON {phi: student accuracy / teacher accuracy}")
    add_common_arguments(parser)
    parser.add_argument("--child_dim", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]
    if args.child_dim:
        return child(args)
    require_citeulike(args.data_path)
    allowed = record_allowed(args)
    accuracy = {}
    if args.accuracy:
        with open(args.accuracy, encoding="utf-8") as handle:
            accuracy = {float(key): value for key, value in json.load(handle).items()}
    env = environment_line("python benchmarks/inference.py --k %d --requests %d%s" % (
        args.k, args.requests, " --accuracy " + args.accuracy if args.accuracy else ""))
    rows = []
    for label, dim in [("teacher (200)", TEACHER_DIM)] + [("student phi=%g (%d)" % (phi, int(TEACHER_DIM * phi)),
                                                           int(TEACHER_DIM * phi)) for phi in PHIS]:
        # one process per model: the allocator state left by one model's big score matrices
        # must not slow the next model's timings
        command = [sys.executable, os.path.abspath(__file__), "--child_dim", str(dim), "--data_path",
                   args.data_path, "--k", str(args.k), "--requests", str(args.requests),
                   "--threads", str(args.threads)]
        r = child_result(command, label)
        rows.append((label, dim, r["params"], r["latency"], r["batch"], r["scoring"], r["topk"], r["plain"]))
        n_users, n_items = r["users"], r["items"]
        print("%s: request %.3f ms, batch %.3f s" % (label, r["latency"] * 1e3, r["batch"]), flush=True)

    teacher = rows[0]
    lines = [env, "", "CiteULike shape: %d users x %d items, training items masked, top-%d."
             % (n_users, n_items, args.k), "",
             "| model | params | (a) one request, median (ms) | speed-up | (b) all users (s) | users/s | speed-up "
             "| of which scoring (s) | of which top-k (s) | plain U@V.T + topk (s) | accuracy vs teacher |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for label, dim, params, latency, batch, scoring, topk, naive in rows:
        phi = dim / TEACHER_DIM
        acc = ("%.3f" % accuracy[phi]) if (label != teacher[0] and phi in accuracy) else (
            "1" if label == teacher[0] else "not measured")
        lines.append("| %s | %.2fM | %.3f | %.1fx | %.3f | %.0f | %.2fx | %.3f | %.3f | %.3f | %s |" % (
            label, params / 1e6, latency * 1e3, teacher[3] / latency, batch, n_users / batch,
            teacher[4] / batch, scoring, topk, naive, acc))
    lines += ["", "Scoring / top-k: the batch path's two halves timed apart (same blocks and layout). Top-k "
              "costs about the same at every dimension, so the batch speed-up is bounded by "
              "(teacher scoring + top-k) / top-k."]
    record("inference.py", lines, enabled=allowed)


if __name__ == "__main__":
    main()
