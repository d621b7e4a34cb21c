"""Benchmark 1: training overhead of DE, RRD and DE-RRD over the student alone, side by side.

Runs on the DE-RRD paper's CiteULike split (``../shared/datasets/citeulike``; pass another
``--data_path`` for your copy), BPR 200 -> BPR 20, same batch size for every method. Each method
trains ``--epochs`` epochs on the same RecBole data loader; the table reports the median epoch
time (including the per-epoch RRD sampling and tau update), the ratio to the student alone, and
where DE-RRD's time goes. The teacher is an untrained BPR-200 shell: its weights do not change
the cost. Prints the torch thread count and the load average, and appends the table to
``benchmarks/RESULTS.md``. Do not record a result taken while anything else runs.

    python benchmarks/train_overhead.py --epochs 3
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # benchmark this checkout's code
DEFAULT_DATA = os.path.normpath(os.path.join(HERE, "..", "..", "shared", "datasets"))


def build(model_name, data_path, batch_size):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    config = Config(model=model_name, dataset="citeulike", config_dict={
        "data_path": data_path, "benchmark_filename": ["train", "valid", "test"],
        "load_col": {"inter": ["user_id", "item_id"]}, "train_batch_size": batch_size,
        "embedding_size": 20, "t_embedding_size": 200, "state": "ERROR", "show_progress": False,
        "eval_args": {"mode": "uni499", "order": "RO", "group_by": "user"},
    })
    init_seed(config["seed"], config["reproducibility"])
    train, valid, _ = data_preparation(config, create_dataset(config))
    model = get_model(model_name)(config, train._dataset)
    return config, model, train, valid


def time_epochs(model, train, epochs, prepare=None):
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    totals, hooks, losses = [], [], []
    for epoch in range(epochs):
        start = time.perf_counter()
        if prepare:
            prepare(epoch)
        hooked = time.perf_counter()
        for batch in train:
            loss = model.calculate_loss(batch)
            loss = sum(loss) if isinstance(loss, tuple) else loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        end = time.perf_counter()
        totals.append(end - start)
        hooks.append(hooked - start)
        losses.append(end - hooked)
    return statistics.median(totals), statistics.median(hooks)


def main(argv=None):
    parser = argparse.ArgumentParser(description="training overhead of DE / RRD / DE-RRD")
    parser.add_argument("--data_path", default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no_record", action="store_true")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.data_path, "citeulike")):
        sys.exit("CiteULike not found under %s (see ../shared/datasets/README.md)" % args.data_path)
    sys.argv = sys.argv[:1]  # RecBole's Config reads --key=value from argv
    import recbole_derrd  # noqa: F401

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    rows = []
    _, student, train, _ = build("BPR", args.data_path, args.batch_size)
    rows.append(("Student alone (BPR-20)",) + time_epochs(student, train, args.epochs))
    for name in ("DE", "RRD", "DERRD"):
        _, model, train, valid = build(name, args.data_path, args.batch_size)
        start = time.perf_counter()
        model.teacher_ready = True  # an untrained teacher shell costs the same as a trained one
        model.prepare(train, valid)
        setup = time.perf_counter() - start
        median, hook = time_epochs(model, train, args.epochs, prepare=model.start_epoch)
        rows.append(("%s (BPR-200 -> BPR-20)" % name, median, hook, setup))
    base = rows[0][1]
    lines = [
        "## train_overhead.py, %s" % datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "",
        "`python benchmarks/train_overhead.py --epochs %d --batch_size %d` on %s (%s), torch %s, "
        "%d threads, load average before: %.2f %.2f %.2f"
        % (args.epochs, args.batch_size, platform.node() or "?", platform.processor() or platform.machine(),
           torch.__version__, torch.get_num_threads(), *load),
        "",
        "| method | median epoch (s) | ratio to student | of which per-epoch hook (s) | one-off setup (s) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        setup = "%.2f" % row[3] if len(row) > 3 else "-"
        lines.append("| %s | %.2f | %.2fx | %.3f | %s |" % (row[0], row[1], row[1] / base, row[2], setup))
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_record:
        with open(os.path.join(HERE, "RESULTS.md"), "a", encoding="utf-8") as handle:
            handle.write("\n" + text)


if __name__ == "__main__":
    main()
