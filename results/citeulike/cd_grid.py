"""Choose CD's four settings on VALIDATION: the shipped grid, one training run per point.

The grid is the plugin's ``properties/tuning/CD.hyper`` (gamma x t x samples x weight, 36
points).  Each point trains CD (student BPR-20, the given frozen teacher) with the protocol of
``citeulike-bpr.yaml`` and records only its best validation result: the test split is never
evaluated here.  Points run one at a time, each in its own process, and a finished point (its
JSON file) is never rerun, so an interrupted search resumes where it stopped.

    python results/citeulike/cd_grid.py --data_path ../shared/datasets \
        --teacher_checkpoint cmp/bpr/teachers/BPR-citeulike-<key>.pth --out cmp/cd-grid
    python results/citeulike/cd_grid.py --out cmp/cd-grid --summary   # table only
"""

import argparse
import itertools
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def grid():
    """[(name, values)] from the shipped CD.hyper (lines ``name choice [v1, v2, ...]``)."""
    import recbole_derrd

    axes = []
    with open(recbole_derrd.tuning_file("CD"), encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                name, kind, values = line.split(None, 2)
                if kind != "choice":
                    raise ValueError("CD.hyper: only 'choice' axes are supported, got %r" % kind)
                axes.append((name, json.loads(values)))
    return axes


def point_name(params):
    return "_".join("%s=%s" % (k.replace("cd_", ""), v) for k, v in params.items())


def run_point(args, params):
    """Child process: train one point, write its best validation result."""
    sys.argv = sys.argv[:1]
    from recbole.utils import get_model, get_trainer, init_seed

    from recbole_derrd.quick_start import _prepare
    from recbole_derrd.trainer import safe_trainer_class

    settings = dict(params, teacher_checkpoint=args.teacher_checkpoint, seed=args.seed,
                    checkpoint_dir=os.path.join(args.out, "checkpoints", point_name(params)))
    if args.data_path:
        settings["data_path"] = args.data_path
    config, _, train_data, valid_data, _ = _prepare("CD", None, args.config_files, settings)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model("CD")(config, train_data._dataset).to(config["device"])
    trainer = safe_trainer_class(get_trainer(config["MODEL_TYPE"], "CD"))(config, model)
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


def summary(out):
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
        *[v for _, v in grid()]))), "\n".join(lines))
    print(text)
    with open(os.path.join(out, "cd-grid.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    return records


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_path", help="folder holding citeulike/ (default: RecBole's)")
    parser.add_argument("--teacher_checkpoint")
    parser.add_argument("--config_files", nargs="+", default=[os.path.join(HERE, "citeulike-bpr.yaml")])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--summary", action="store_true", help="only print / write the table")
    parser.add_argument("--point", help=argparse.SUPPRESS)  # child: JSON of one point's params
    args = parser.parse_args()
    args.out = os.path.abspath(args.out)
    os.makedirs(args.out, exist_ok=True)
    if args.point:
        return run_point(args, json.loads(args.point))
    if args.summary:
        return summary(args.out)
    if not args.teacher_checkpoint or not os.path.exists(args.teacher_checkpoint):
        sys.exit("--teacher_checkpoint: a trained teacher checkpoint is required (got %r)"
                 % args.teacher_checkpoint)
    axes = grid()
    points = [dict(zip([n for n, _ in axes], values)) for values in itertools.product(*[v for _, v in axes])]
    for index, params in enumerate(points, 1):
        if os.path.exists(os.path.join(args.out, point_name(params) + ".json")):
            continue
        print("point %d/%d %s" % (index, len(points), point_name(params)), flush=True)
        command = [sys.executable, os.path.abspath(__file__), "--point", json.dumps(params),
                   "--out", args.out, "--teacher_checkpoint", os.path.abspath(args.teacher_checkpoint),
                   "--seed", str(args.seed), "--config_files", *map(os.path.abspath, args.config_files)]
        if args.data_path:
            command += ["--data_path", os.path.abspath(args.data_path)]
        subprocess.run(command, check=True, cwd=args.out)
    summary(args.out)


if __name__ == "__main__":
    main()
