"""Benchmark 3: serving cost of the teacher and of students at phi = 0.5 and 0.1, like a server.

BPR models shaped like the paper's CiteULike setting (teacher 200-dim; students 100 and 20
dims), all served through the same prepared request path
(:class:`recbole_derrd.serving.requests.Recommender`: product kernel timed at preparation,
training items masked, two-stage top-k), with the same thread count:

(a) requests: one user against the full catalogue, top-20, training items left out; p50 and
    p99 over ``--requests`` users (1,000 by default), at one thread (a server running requests
    side by side) and at the machine's threads.  Beside it, in the same process and at the same
    threads, the **floor**: ``torch.topk(torch.mv(items, user), 20)`` on prebuilt tensors (no
    masking), and the product alone with the chosen kernel;
(b) batch: top-20 for every user (blocked scoring + running top-k), with its scoring and top-k
    halves timed apart: top-k costs the same at every width, so even a student whose scoring
    were free could not beat the teacher's batch time by more than teacher / top-k (the bound);
(c) with ``faiss-cpu`` installed: an HNSW index over the item vectors, its recall@20 against
    the exact top-20 and its request p50 (one thread).

Each model runs in its own process, and the whole set runs ``--runs`` times (3 by default) in
separate processes: the tables give medians over runs and the spread of the request p50
((max - min) / median).  The load average is printed before each run.  Latency does not depend
on the weights, so the models are untrained (random normal vectors); the index recall on these
vectors is not the recall on trained ones (docs/serving.md has a trained student's).

    python benchmarks/inference.py
"""

import argparse
import os
import sys
import time

import numpy as np
import torch

from _common import (add_common_arguments, child_result, citeulike_config, environment_line,
                     median_seconds, print_result, record, record_allowed, require_citeulike)

TEACHER_DIM = 200
MODELS = (("teacher (200)", 200), ("student phi=0.5 (100)", 100), ("student phi=0.1 (20)", 20))


def limit_threads(threads):
    """torch's and the BLAS libraries' (numpy's OpenBLAS) thread pools, for this process."""
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(threads)


def percentiles(seconds):
    return float(np.percentile(seconds, 50)), float(np.percentile(seconds, 99))


def time_each(fn, arguments, warmup=100):
    for argument in arguments[:warmup]:
        fn(argument)
    times = np.empty(len(arguments))
    for position, argument in enumerate(arguments):
        start = time.perf_counter()
        fn(argument)
        times[position] = time.perf_counter() - start
    return times


def measure_requests(recommender, users_t, items_t, request_users, k):
    """(a) at the current thread count: the request path, the floor, the product alone."""
    path = time_each(lambda user: recommender.request(user, k), request_users)
    floor = time_each(lambda user: torch.topk(torch.mv(items_t, users_t[user]), k), request_users)
    out = np.empty(recommender.n_items, dtype=np.float32)
    product = time_each(lambda user: recommender.scores(user, out), request_users)
    (p50, p99), (floor_p50, floor_p99) = percentiles(path), percentiles(floor)
    return {"p50": p50, "p99": p99, "floor_p50": floor_p50, "floor_p99": floor_p99,
            "product_p50": percentiles(product)[0], "kernel": recommender.kernel}


def measure_batch(recommender, users_t, items_t, k):
    """(b) all users, and the two halves of the blocked path (same blocks and layout)."""
    from recbole_derrd.serving.inference import default_user_block

    all_users = np.arange(1, recommender.n_users)
    batch = median_seconds(lambda: recommender.batch(all_users, k), repeats=3)
    block = default_user_block(users_t.shape[1])
    rows = users_t[1:]
    items_tr = items_t.t().contiguous()
    buffer = torch.empty(block, items_t.shape[0])
    starts = range(0, len(rows) - block + 1, block)
    scoring = median_seconds(lambda: [torch.mm(rows[s:s + block], items_tr, out=buffer) for s in starts], repeats=3)
    topk = median_seconds(lambda: [torch.topk(buffer, k, dim=1) for _ in starts], repeats=3)
    return {"batch": batch, "scoring": scoring, "topk": topk}


def measure_index(recommender, request_users, k):
    """(c) faiss HNSW: recall@k against the exact path, request p50; None without faiss."""
    try:
        from recbole_derrd.serving.vector_index import ItemIndex, recall_at_k, search_request
        index = ItemIndex.for_recommender(recommender)
    except ImportError:
        return None
    found = [search_request(index, recommender, user, k)[1] for user in request_users]
    exact = [recommender.request(user, k)[1] for user in request_users]
    latency = time_each(lambda user: search_request(index, recommender, user, k), request_users)
    return {"recall": recall_at_k(found, exact), "p50": percentiles(latency)[0]}


def child(args):
    """One model's measurements, printed as a JSON line (runs in its own process)."""
    import recbole_derrd  # noqa: F401
    from recbole.data import create_dataset
    from recbole.model.general_recommender import BPR

    from recbole_derrd.serving.requests import Recommender

    config = citeulike_config("BPR", args.data_path, 1024, embedding_size=args.child_dim)
    dataset = create_dataset(config)
    exclude = dataset.inter_matrix(form="csr")
    model = BPR(config, dataset).eval()
    rng = np.random.default_rng(0)
    request_users = [int(u) for u in rng.choice(np.arange(1, dataset.user_num), size=args.requests,
                                                replace=args.requests >= dataset.user_num)]
    users_t = model.user_embedding.weight.detach().contiguous()
    items_t = model.item_embedding.weight.detach().contiguous()
    result = {"params": sum(p.numel() for p in model.parameters()), "users": int(dataset.user_num - 1),
              "items": int(dataset.item_num - 1), "threads": {}}
    for threads in sorted({1, args.threads}):
        limit_threads(threads)
        recommender = Recommender.from_model(model, exclude, k=args.k)  # kernel timed at these threads
        entry = measure_requests(recommender, users_t, items_t, request_users, args.k)
        entry.update(measure_batch(recommender, users_t, items_t, args.k))
        result["threads"][str(threads)] = entry
    limit_threads(1)
    result["index"] = measure_index(Recommender.from_model(model, exclude, k=args.k), request_users, args.k)
    print_result(result)


def spread(values):
    return (max(values) - min(values)) / float(np.median(values))


def main(argv=None):
    parser = argparse.ArgumentParser(description="teacher vs student serving cost")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3, help="separate processes per model")
    add_common_arguments(parser)
    parser.add_argument("--child_dim", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.argv = sys.argv[:1]
    if args.child_dim:
        return child(args)
    require_citeulike(args.data_path)
    allowed = record_allowed(args)
    env = environment_line("python benchmarks/inference.py --k %d --requests %d --runs %d"
                           % (args.k, args.requests, args.runs))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               "unknown CPU") if os.path.exists("/proc/cpuinfo") else "unknown CPU"
    runs = {label: [] for label, _ in MODELS}
    loads = []
    for run in range(args.runs):
        loads.append(os.getloadavg())
        print("run %d, load average %.2f %.2f %.2f" % ((run + 1,) + loads[-1]), flush=True)
        for label, dim in MODELS:
            command = [sys.executable, os.path.abspath(__file__), "--child_dim", str(dim), "--data_path",
                       args.data_path, "--k", str(args.k), "--requests", str(args.requests),
                       "--threads", str(args.threads)]
            result = child_result(command, label)
            runs[label].append(result)
            one = result["threads"]["1"]
            print("  %s: request p50 %.3f ms (floor %.3f), kernel %s" % (label, one["p50"] * 1e3,
                                                                         one["floor_p50"] * 1e3, one["kernel"]),
                  flush=True)
    first = runs[MODELS[0][0]][0]
    lines = [env, "", "CPU: %s. Load average before each run: %s." % (
        cpu, "; ".join("%.2f %.2f %.2f" % load for load in loads)), "",
        "CiteULike shape: %d users x %d items, training items masked, top-%d; %d requests per model, %d runs "
        "in separate processes (medians over runs; spread = (max - min) / median of the run p50s)."
        % (first["users"], first["items"], args.k, args.requests, args.runs)]

    def median_of(label, threads, key):
        return float(np.median([r["threads"][threads][key] for r in runs[label]]))

    teacher = MODELS[0][0]
    for threads in sorted({1, args.threads}):
        t = str(threads)
        lines += ["", "**(a) one request, %d thread%s**" % (threads, "s" if threads > 1 else ""), "",
                  "| model | params | kernel | p50 (ms) | p99 (ms) | p99 / p50 | p50 spread | floor p50 (ms) "
                  "| p50 / floor | product alone p50 (ms) | p50 speed-up vs teacher |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for label, _ in MODELS:
            p50, p99 = median_of(label, t, "p50"), median_of(label, t, "p99")
            floor = median_of(label, t, "floor_p50")
            kernels = sorted({r["threads"][t]["kernel"] for r in runs[label]})
            lines.append("| %s | %.2fM | %s | %.3f | %.3f | %.1f | %.0f%% | %.3f | %.2f | %.3f | %.1fx |" % (
                label, runs[label][0]["params"] / 1e6, "/".join(kernels), p50 * 1e3, p99 * 1e3, p99 / p50,
                100 * spread([r["threads"][t]["p50"] for r in runs[label]]), floor * 1e3, p50 / floor,
                median_of(label, t, "product_p50") * 1e3, median_of(teacher, t, "p50") / p50))
        lines += ["", "**(b) all users, %d thread%s**" % (threads, "s" if threads > 1 else ""), "",
                  "| model | all users (s) | speed-up vs teacher | of which scoring (s) | of which top-k (s) "
                  "| top-k bound: teacher all users / this top-k |", "| --- | --- | --- | --- | --- | --- |"]
        for label, _ in MODELS:
            bound = median_of(teacher, t, "batch") / median_of(label, t, "topk")
            lines.append("| %s | %.3f | %.2fx | %.3f | %.3f | %s |" % (
                label, median_of(label, t, "batch"), median_of(teacher, t, "batch") / median_of(label, t, "batch"),
                median_of(label, t, "scoring"), median_of(label, t, "topk"),
                "-" if label == teacher else "%.1fx" % bound))
    if all(r["index"] for rs in runs.values() for r in rs):
        lines += ["", "**(c) faiss HNSW (M 32, efSearch 128), 1 thread, untrained vectors**", "",
                  "| model | recall@%d vs exact | request p50 (ms) | exact request p50 (ms) |" % args.k,
                  "| --- | --- | --- | --- |"]
        for label, _ in MODELS:
            lines.append("| %s | %.4f | %.3f | %.3f |" % (
                label, np.median([r["index"]["recall"] for r in runs[label]]),
                np.median([r["index"]["p50"] for r in runs[label]]) * 1e3, median_of(label, "1", "p50") * 1e3))
    else:
        lines += ["", "(c) skipped: faiss-cpu is not installed."]
    student = MODELS[-1][0]
    lines += ["", "phi = 0.1 student, 1 thread: request p50 %.1fx faster than the teacher's, %.2fx its floor, "
              "p99 %.1fx its p50, p50 spread over runs %.0f%%; all users %.2fx faster." % (
                  median_of(teacher, "1", "p50") / median_of(student, "1", "p50"),
                  median_of(student, "1", "p50") / median_of(student, "1", "floor_p50"),
                  median_of(student, "1", "p99") / median_of(student, "1", "p50"),
                  100 * spread([r["threads"]["1"]["p50"] for r in runs[student]]),
                  median_of(teacher, "1", "batch") / median_of(student, "1", "batch"))]
    record("inference.py", lines, enabled=allowed)


if __name__ == "__main__":
    main()
