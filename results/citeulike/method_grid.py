"""Choose a method's settings on VALIDATION from its shipped grid, one training run per point.

The grid is the plugin's ``properties/tuning/<MODEL>.hyper`` (lines ``key choice [v1, ...]``).
Each point trains the model (student BPR-20, the given frozen teacher) with the protocol of
``citeulike-bpr.yaml`` and records only its best validation result: the test split is never
evaluated here.  Points run one at a time, each in its own process, and a finished point (its
JSON file) is never rerun, so an interrupted search resumes where it stopped.

Two strategies over the same grid:

* ``full`` (default): every point of the grid.
* ``axis``: one pass of coordinate search, for when the full grid does not fit the budget
  (issue 18 allows 13 points per method).  Start at the model's fixed ``STARTS`` point, then for
  each axis in its ``AXIS_ORDERS`` try all its values with the other settings held at the best
  point so far, and keep the best: 1 + sum(values - 1) points (CD 10, DERRD 9, IRRRD 7,
  HTD 7, RCEKD 8, RD 8, DE 5, RRD 6, DEIRRRD 9).  It can miss
  interactions between settings that only the full grid would find.

    python results/citeulike/method_grid.py --model DERRD --data_path ../shared/datasets \
        --teacher_checkpoint cmp/bpr/teachers/BPR-citeulike-<key>.pth --out cmp/derrd-grid --strategy axis
    python results/citeulike/method_grid.py --model DERRD --out cmp/derrd-grid --summary   # table only

``--jobs 2`` trains an axis's points side by side (each point's result is the same as alone);
a spare slot trains the next axis's point as if the best so far holds (see ``axis_search``),
and the search goes on without waiting for such a point (see ``PointPool``).
"""

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Each axis search's fixed starting point, constants so that a search stays reproducible after the
# model's yaml takes the chosen values.  CD: its provisional defaults before any search
# (properties/model/CD.yaml of 2026-11-28).  DERRD: the paper's settings (properties/model/DERRD.yaml,
# RRD.yaml, DE.yaml of 2026-12-02); DE's rows come from the config file (citeulike-bpr.yaml: the
# paper's `de_rows: batch`, as every recorded DE-RRD cell).
STARTS = {
    "CD": {"cd_gamma": 100.0, "cd_temperature": 1.0, "cd_samples": 10, "cd_weight": 0.01},
    "DERRD": {"de_weight": 0.01, "rrd_weight": 0.001, "rrd_k": 40, "rrd_temperature": 10.0,
              "rrd_sampling": "sample", "de_anneal_epochs": 1000},
    # the authors' settings (IR-RRD's log, HTD's published example, RCE-KD's CiteULike BPR config)
    "IRRRD": {"rrd_weight": 0.001, "ir_weight": 0.0005, "rrd_sampling": "sample", "ir_k": 20},
    "HTD": {"htd_weight": 0.001, "htd_alpha": 0.5, "htd_num_groups": 30, "htd_anneal_epochs": 100},
    "RCEKD": {"rce_weight": 500.0, "rce_beta": 3.0, "rce_tau": 1.0, "rce_k": 50, "rce_sampling": "collaborative"},
    # the paper's settings of RD, DE and RRD alone (properties/model/*.yaml); DE + IR-RRD: DE's and
    # the authors' IR-RRD settings together
    "RD": {"rd_weight": 1.0, "rd_k": 10, "rd_lambda": 1.0, "rd_mu": 0.1},
    "DE": {"de_weight": 0.01, "de_num_experts": 30, "de_anneal_epochs": 1000},
    "RRD": {"rrd_weight": 0.001, "rrd_temperature": 10.0, "rrd_sampling": "sample", "rrd_k": 40},
    "DEIRRRD": {"de_weight": 0.01, "rrd_weight": 0.001, "ir_weight": 0.0005, "ir_k": 20, "de_anneal_epochs": 1000},
}
# The loss weights first: they decide whether a term matters at all.  DERRD: the temperature
# before the sampling switch, since `top` makes the temperature irrelevant.
AXIS_ORDERS = {
    "CD": ("cd_weight", "cd_gamma", "cd_samples", "cd_temperature"),
    "DERRD": ("rrd_weight", "de_weight", "rrd_temperature", "rrd_sampling", "rrd_k", "de_anneal_epochs"),
    "IRRRD": ("rrd_weight", "ir_weight", "rrd_sampling", "ir_k"),
    "HTD": ("htd_weight", "htd_alpha", "htd_num_groups", "htd_anneal_epochs"),
    "RCEKD": ("rce_weight", "rce_beta", "rce_tau", "rce_k", "rce_sampling"),
    "RD": ("rd_weight", "rd_k", "rd_lambda", "rd_mu"),
    "DE": ("de_weight", "de_num_experts", "de_anneal_epochs"),
    "RRD": ("rrd_weight", "rrd_temperature", "rrd_sampling", "rrd_k"),
    "DEIRRRD": ("de_weight", "rrd_weight", "ir_weight", "ir_k", "de_anneal_epochs"),
}
def grid(model="CD"):
    """[(name, values)] from the shipped <model>.hyper (lines ``name choice [v1, v2, ...]``)."""
    import recbole_derrd

    axes = []
    with open(recbole_derrd.tuning_file(model), encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                name, kind, values = line.split(None, 2)
                if kind != "choice":
                    raise ValueError("%s.hyper: only 'choice' axes are supported, got %r" % (model, kind))
                axes.append((name, json.loads(values)))
    return axes


def point_name(params):
    """A point's file name: its settings, CD's without their ``cd_`` prefix (as recorded)."""
    return "_".join("%s=%s" % (k[3:] if k.startswith("cd_") else k, v) for k, v in params.items())


def axis_search(axes, evaluate, start, order, prefetch=None, width=1, budget=13, finished=None):
    """One coordinate-search pass: ``evaluate(params) -> validation score`` (higher is better).

    Returns (best params, [params in the order evaluated]).  Ties keep the earlier point, so the
    start wins unless another value is strictly better.  ``prefetch(points)``, when given, is
    handed each axis's new points before they are evaluated: they differ only on that axis and
    do not depend on each other's scores, so they may be trained side by side.

    ``width`` (the number of points trained side by side): the start is handed with the first
    axis's points; when an axis's untrained points leave its last round short of ``width``, the
    spare slots go to the next axes' points *as if the best so far stays best*, which it usually
    does; such a point is off the search's path (trained but never compared) only when
    the current axis moves the best.  Speculation stops where the points trained could exceed
    ``budget`` (issue 18's 13 per method), so the path itself always fits.  ``finished(params)``
    says which points need no training (a resumed search): they take no slot."""
    values = dict(axes)
    missing = set(order) ^ set(values)
    if missing:
        raise ValueError("axis order and grid axes differ on %s" % sorted(missing))
    if any(start[name] not in values[name] for name in order):
        raise ValueError("start point %s is not on the grid %s" % (start, values))
    best, best_score, seen = dict(start), None, [dict(start)]
    handed = []  # every point given to prefetch (trained), on the path or not
    for index, name in enumerate(order):
        if prefetch:
            # the start trains beside the first axis's points: they do not need its score
            batch = []
            for c in ([dict(start)] if index == 0 else []) + [dict(best, **{name: v}) for v in values[name]]:
                if c not in handed and c not in batch:
                    batch.append(c)
            path_left = sum(len(values[n]) - 1 for n in order[index + 1:])
            for later in order[index + 1:]:
                for value in values[later]:
                    guess = dict(best, **{later: value})
                    # fill the batch's last round only: an axis whose points are all trained
                    # already may still move the best, so it speculates nothing
                    slots = -len([b for b in batch if not (finished and finished(b))]) % width
                    if (slots > 0 and guess not in handed and guess not in batch
                            and len(handed) + len(batch) + path_left < budget):
                        batch.append(guess)
            handed += batch
            prefetch(batch)
        if best_score is None:
            best_score = evaluate(dict(start))
        for value in values[name]:
            candidate = dict(best, **{name: value})
            if candidate in seen:
                continue
            seen.append(candidate)
            score = evaluate(candidate)
            if score > best_score:
                best, best_score = candidate, score
    if best_score is None:  # no axes
        evaluate(dict(start))
    return best, seen


class PointPool:
    """Child processes training points, up to ``jobs`` at a time, fed from a queue.

    ``add`` queues points (the search's prefetch); ``wait_for(params)`` keeps the slots full until
    that point is finished, moving it to the head of the queue, and returns while other points go
    on training: a search is never held by a speculative point it no longer needs, as it was when
    each batch of points had to finish together.  ``start(params) -> (process, name)`` launches a
    child (``poll()`` / ``returncode`` as ``subprocess.Popen``); ``finished(params)`` says whether
    a point's record exists.  A failed child stops new launches; the pool waits for the running
    ones (their records are kept) and exits with the failed points' names.
    """

    def __init__(self, start, finished, jobs, sleep=time.sleep):
        self.start, self.finished, self.jobs, self.sleep = start, finished, jobs, sleep
        self.queue, self.running, self.failed = [], [], []

    def _known(self, params):
        return params in self.queue or any(params == p for p, _, _ in self.running)

    def add(self, points):
        self.queue += [p for p in points if not self.finished(p) and not self._known(p)]

    def _reap(self):
        for entry in [e for e in self.running if e[1].poll() is not None]:
            self.running.remove(entry)
            if entry[1].returncode != 0:
                self.failed.append(entry[2])

    def wait_for(self, params):
        """Until ``params`` is finished (``None``: until nothing is queued or running)."""
        if params is not None and not self.finished(params):
            if params in self.queue:
                self.queue.remove(params)
            if not self._known(params):
                self.queue.insert(0, params)
        while True:
            self._reap()
            if self.failed:
                self.queue = []
                if not self.running:
                    sys.exit("method_grid: point(s) %s failed (see their output above)" % ", ".join(self.failed))
            while self.queue and len(self.running) < self.jobs:
                point = self.queue.pop(0)
                if not self.finished(point):
                    process, name = self.start(point)
                    self.running.append((point, process, name))
            if not self.failed and (self.finished(params) if params is not None else not self.running):
                return
            if params is not None and not self.finished(params) and not self._known(params):
                self.failed.append("%s (ended without its record)" % params)  # never wait forever
                continue
            self.sleep(2)


def run_point(args, params):
    """Child process: train one point, write its best validation result."""
    sys.argv = sys.argv[:1]
    from recbole.utils import get_model, get_trainer, init_seed

    from recbole_derrd.quick_start import prepare
    from recbole_derrd.trainer import safe_trainer_class

    settings = dict(params, teacher_checkpoint=args.teacher_checkpoint, seed=args.seed,
                    checkpoint_dir=os.path.join(args.out, "checkpoints", point_name(params)))
    if args.data_path:
        settings["data_path"] = args.data_path
    config, _, train_data, valid_data, _ = prepare(args.model, None, args.config_files, settings)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(args.model)(config, train_data._dataset).to(config["device"])
    trainer = safe_trainer_class(get_trainer(config["MODEL_TYPE"], args.model))(config, model)
    score, result = trainer.fit(train_data, valid_data, saved=False, show_progress=False)
    record = {"params": params, "best_valid_score": float(score),
              "best_valid_result": {k: float(v) for k, v in result.items()},
              "valid_metric": config["valid_metric"], "last_epoch": int(model.epoch),
              # RecBole resets cur_step at every improvement and evaluates every eval_step epochs
              "best_epoch": int(model.epoch) - trainer.cur_step * config["eval_step"]}
    path = os.path.join(args.out, point_name(params) + ".json")
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=1)
    os.replace(path + ".tmp", path)


def summary(out, model="CD"):
    records = []
    for name in sorted(os.listdir(out)):
        if name.endswith(".json"):
            with open(os.path.join(out, name), encoding="utf-8") as handle:
                records.append(json.load(handle))
    records.sort(key=lambda r: -r["best_valid_score"])
    names = list(records[0]["params"]) if records else []
    lines = ["| rank | " + " | ".join(names) + " | valid N@10 | valid H@10 | best/last epoch |",
             "| --- |" + " --- |" * (len(names) + 3)]
    for rank, r in enumerate(records, 1):
        lines.append("| %d | %s | %.4f | %.4f | %d/%d |" % (
            rank, " | ".join(str(r["params"][n]) for n in names), r["best_valid_result"]["ndcg@10"],
            r["best_valid_result"]["hit@10"], r["best_epoch"], r["last_epoch"]))
    text = "%d points finished (of %d)\n\n%s\n" % (len(records), len(list(itertools.product(
        *[v for _, v in grid(model)]))), "\n".join(lines))
    print(text)
    with open(os.path.join(out, "%s-grid.md" % model.lower()), "w", encoding="utf-8") as handle:
        handle.write(text)
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_path", help="folder holding citeulike/ (default: RecBole's)")
    parser.add_argument("--teacher_checkpoint")
    parser.add_argument("--config_files", nargs="+", default=[os.path.join(HERE, "citeulike-bpr.yaml")])
    parser.add_argument("--model", choices=sorted(STARTS), default="CD")
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strategy", choices=("full", "axis"), default="full",
                        help="every grid point, or one coordinate-search pass (see the docstring)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="axis search: train up to this many points of one axis side by side "
                             "(one process each; set OMP_NUM_THREADS so that they share the cores)")
    parser.add_argument("--summary", action="store_true", help="only print / write the table")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # child: JSON of one point's params
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error("--jobs must be at least 1 (got %d)" % args.jobs)
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    if args.point:
        return run_point(args, json.loads(args.point))
    if args.summary:
        return summary(args.out, args.model)
    if not args.teacher_checkpoint or not os.path.exists(args.teacher_checkpoint):
        sys.exit("--teacher_checkpoint: a trained teacher checkpoint is required (got %r)"
                 % args.teacher_checkpoint)
    axes = grid(args.model)
    names = [n for n, _ in axes]

    def record_path(params):
        return os.path.join(args.out, point_name({n: params[n] for n in names}) + ".json")

    def start(params):
        """A child process training one point."""
        params = {n: params[n] for n in names}
        print("point %s (%s)" % (point_name(params), args.strategy), flush=True)
        command = [sys.executable, os.path.abspath(__file__), "--point", json.dumps(params), "--model", args.model,
                   "--out", args.out, "--teacher_checkpoint", os.path.abspath(args.teacher_checkpoint),
                   "--seed", str(args.seed), "--config_files", *map(os.path.abspath, args.config_files)]
        if args.data_path:
            command += ["--data_path", os.path.abspath(args.data_path)]
        return subprocess.Popen(command, cwd=args.out), point_name(params)

    pool = PointPool(start, lambda p: os.path.exists(record_path(p)), args.jobs)

    def evaluate(params):
        """Train one point (unless finished); its best validation score."""
        pool.wait_for(params)
        with open(record_path(params), encoding="utf-8") as handle:
            return json.load(handle)["best_valid_score"]

    if args.strategy == "axis":
        best, seen = axis_search(axes, evaluate, STARTS[args.model], AXIS_ORDERS[args.model],
                                 prefetch=pool.add if args.jobs > 1 else None, width=args.jobs,
                                 finished=lambda p: os.path.exists(record_path(p)))
        pool.wait_for(None)  # speculative points still training: their records are kept
        print("axis search: %d points, best %s" % (len(seen), point_name(best)), flush=True)
    else:
        for values in itertools.product(*[v for _, v in axes]):
            evaluate(dict(zip(names, values)))
    summary(args.out, args.model)


if __name__ == "__main__":
    main()
