"""Sequential distillation cost: an RRD (and DE-RRD) epoch against the student-alone epoch.

ml-100k (bundled with RecBole) under RecBole's sequential protocol (prefix augmentation,
``MAX_ITEM_LIST_LENGTH`` 50, CE loss), teacher SASRec (64 hidden, 2 layers), student SASRec (16
hidden, 1 layer).  Every row runs in its own fresh process, ``--rounds`` times in alternating
order, each time one untimed warm-up epoch and ``--epochs`` timed ones; an "epoch" may be cut to
its first ``--max_batches`` batches (stated in the record).  RRD's time includes the per-batch
teacher scoring of the batch's prefixes, the top-N and the list draws.  The teacher is an
untrained shell of the teacher's sizes: its weights do not change the cost.

A second measurement (``--memory``) is the peak memory of the teacher ranking on a synthetic
100,000-item catalogue: one batch of prefixes scored by a SASRec-64 teacher, masked, its top-N
taken and lists drawn, in a fresh process; the peak resident memory is compared with the same
process before the draw.

    python benchmarks/sequential_epoch.py --epochs 2 --rounds 2 --max_batches 30
"""

import argparse
import os
import statistics
import sys
import time

import torch

from _common import add_common_arguments, child_result, environment_line, print_result, record, record_allowed
from train_overhead import EpochTimer

ROWS = [  # (label, model)
    ("Student alone (SASRec-16, 1 layer)", "SASRec"),
    ("RRD (SASRec-64 x2 -> SASRec-16 x1)", "RRD"),
    ("DE-RRD (SASRec-64 x2 -> SASRec-16 x1)", "DERRD"),
]
SIZES = {"hidden_size": 16, "inner_size": 64, "n_layers": 1, "t_hidden_size": 64, "t_inner_size": 256,
         "t_n_layers": 2}


def settings(batch_size, cache_mib):
    return dict(SIZES, student_model="SASRec", teacher_model="SASRec", train_neg_sample_args=None,
                train_batch_size=batch_size, state="ERROR", show_progress=False, de_rows="epoch",
                prefix_cache_mib=cache_mib)


def prepared(model_name, batch_size, cache_mib=1024):
    import recbole_derrd  # noqa: F401  (registers the plugin's models)
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, init_seed

    config = Config(model=model_name, dataset="ml-100k", config_dict=settings(batch_size, cache_mib))
    init_seed(config["seed"], config["reproducibility"])
    train, _, _ = data_preparation(config, create_dataset(config))
    model = get_model(model_name)(config, train._dataset)
    hook, setup = None, 0.0
    if model_name != "SASRec":
        model.teacher_ready = True  # an untrained teacher shell costs the same as a trained one
        model.prepare_terms(train)
        setup = model.terms_prepare_seconds
        hook = model.start_epoch
    return model, train, hook, setup


def measure_row(args):
    torch.set_num_threads(args.threads)
    model, train, hook, setup = prepared(ROWS[args.row][1], args.batch_size, args.cache_mib)
    batches = [batch for _, batch in zip(range(args.max_batches or len(train)), train)]
    timer = EpochTimer(model, batches, hook)  # the fused Adam the plugin's trainer uses
    timer.run_epoch()  # untimed warm-up
    timer.totals.clear()
    for _ in range(args.epochs):
        timer.run_epoch()
    print_result({"totals": timer.totals, "batches": len(batches), "all_batches": len(train),
                  "setup": setup})


def _status_mib(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no %s in /proc/self/status" % field)


def resident_mib():
    """This process's resident memory now (Linux)."""
    return _status_mib("VmRSS")


def reset_peak():
    """Start the peak-resident count afresh (Linux: clear_refs 5 resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def peak_mib():
    return _status_mib("VmHWM")


def measure_memory(args):
    """Child: the teacher ranking of one batch of prefixes over a 100,000-item catalogue."""
    from recbole.model.sequential_recommender import SASRec

    from recbole_derrd.distillation.query_lists import SCORE_BLOCK_ELEMENTS, QueryListSampler
    from recbole_derrd.sequential_backbones import SequentialAdapter

    torch.set_num_threads(args.threads)
    n_items, rows, length = args.memory_items, args.batch_size, 50

    class Shell(SASRec):
        def __init__(self):  # SASRec's layers without a RecBole dataset
            torch.nn.Module.__init__(self)
            from recbole.model.layers import TransformerEncoder

            self.ITEM_SEQ, self.ITEM_SEQ_LEN, self.USER_ID = "item_id_list", "item_length", "user_id"
            self.n_items, self.max_seq_length, self.hidden_size, self.n_layers = n_items, length, 64, 2
            self.item_embedding = torch.nn.Embedding(n_items, 64, padding_idx=0)
            self.position_embedding = torch.nn.Embedding(length, 64)
            self.trm_encoder = TransformerEncoder(n_layers=2, n_heads=2, hidden_size=64, inner_size=256,
                                                  hidden_dropout_prob=0.5, attn_dropout_prob=0.5,
                                                  hidden_act="gelu", layer_norm_eps=1e-12)
            self.LayerNorm = torch.nn.LayerNorm(64, eps=1e-12)
            self.dropout = torch.nn.Dropout(0.5)

    from recbole.data.interaction import Interaction

    teacher = Shell().eval().requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    batch = Interaction({"item_id_list": torch.randint(1, n_items, (rows, length), generator=generator),
                         "item_length": torch.randint(1, length + 1, (rows,), generator=generator),
                         "item_id": torch.randint(1, n_items, (rows,), generator=generator)})
    adapter = SequentialAdapter(teacher)
    adapter.bind(batch)
    sampler = QueryListSampler(n_items, 500, 40, 40, 10.0)
    with torch.no_grad():
        adapter.queries()
    before = resident_mib()
    reset_peak()
    start = time.perf_counter()
    with torch.no_grad():
        sampler.draw(adapter.all_scores, torch.arange(rows), batch["item_id"].view(-1, 1), generator)
    seconds = time.perf_counter() - start
    print_result({"before_mib": before, "peak_mib": peak_mib(), "seconds": seconds, "rows": rows,
                  "row_block": sampler.row_block, "block_mib": sampler.row_block * n_items * 4 / 2 ** 20,
                  "full_matrix_mib": rows * n_items * 4 / 2 ** 20, "limit_mib": SCORE_BLOCK_ELEMENTS * 4 / 2 ** 20})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max_batches", type=int, default=30, help="0 = whole epochs")
    parser.add_argument("--batch_size", type=int, default=1024)
    parser.add_argument("--memory_items", type=int, default=100000)
    parser.add_argument("--cache_mib", type=float, default=1024,
                        help="prefix_cache_mib of the distilled rows (0: teacher scoring per batch)")
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)
    add_common_arguments(parser, data_path=False)
    args = parser.parse_args(argv)
    if args.memory:
        return measure_memory(args)
    if args.row is not None:
        return measure_row(args)

    recording = record_allowed(args)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/sequential_epoch.py " + " ".join(sys.argv[1:] if argv is None else argv)
    environment = environment_line(command)
    base = [sys.executable, os.path.abspath(__file__), "--epochs", str(args.epochs), "--threads",
            str(args.threads), "--max_batches", str(args.max_batches), "--batch_size", str(args.batch_size),
            "--cache_mib", str(args.cache_mib)]
    per_row = [[] for _ in ROWS]
    setups = [[] for _ in ROWS]
    batches = None
    for round_ in range(args.rounds):
        order = range(len(ROWS)) if round_ % 2 == 0 else reversed(range(len(ROWS)))
        for index in order:
            result = child_result(base + ["--row", str(index)], ROWS[index][0])
            per_row[index] += result["totals"]
            setups[index].append(result["setup"])
            batches = (result["batches"], result["all_batches"])
            print("round %d  %-40s %s s" % (round_ + 1, ROWS[index][0],
                                            " ".join("%.2f" % t for t in result["totals"])), flush=True)
    memory = child_result(base + ["--memory", "--memory_items", str(args.memory_items)], "memory")
    student = statistics.median(per_row[0])
    lines = [environment, "",
             "ml-100k, RecBole's sequential protocol, train_batch_size %d, prefix_cache_mib %g; %d of "
             "the epoch's %d batches per timed pass; %d rounds x %d passes per row, each row in its own "
             "process; setup: the terms' one-off preparation (the prefix table: one teacher pass over "
             "every training prefix)" % (args.batch_size, args.cache_mib, batches[0], batches[1], args.rounds,
                                         args.epochs), "",
             "| row | median s per pass | spread (min-max) | / student | setup s (median) |",
             "| --- | --- | --- | --- | --- |"]
    for (label, _), times, setup in zip(ROWS, per_row, setups):
        lines.append("| %s | %.2f | %.2f-%.2f | %.2fx | %.1f |" % (
            label, statistics.median(times), min(times), max(times), statistics.median(times) / student,
            statistics.median(setup)))
    lines += ["", "Teacher ranking on a %s-item catalogue (SASRec-64 x2 teacher, %d prefixes, top-500, "
              "K = L = 40): %.2f s; resident memory %.0f MiB before the draw, peak %.0f MiB during it (score "
              "blocks of %d rows = %.0f MiB; the whole [rows x items] matrix would be %.0f MiB)"
              % (format(args.memory_items, ","), memory["rows"], memory["seconds"], memory["before_mib"],
                 memory["peak_mib"], memory["row_block"], memory["block_mib"], memory["full_matrix_mib"])]
    record("Sequential epoch cost, ml-100k", lines, recording)


if __name__ == "__main__":
    sys.exit(main())
