"""One table of rows from several comparison folders: test accuracy beside training cost.

Each comparison (``run_recbole_derrd.py --compare=... --out_dir=F``) summarises its own rows, and
a method tuned later lands in a folder of its own. This puts rows of several folders side by
side, each with the cost its cells recorded (fit seconds per epoch, best / last epochs, seconds
to the best validation point, the whole fit), so that accuracy and cost come from the same runs.
The folders must share the dataset and the test protocol (checked); each row's seeds are listed.

    python results/methods_table.py --teacher results/citeulike/irrrd-3seeds:Teacher \\
        results/citeulike/irrrd-3seeds:Student results/citeulike/irrrd-3seeds:IRRRD \\
        "results/citeulike/derrd-tuned-3seeds:DERRD=DE-RRD, tuned"

A row is ``FOLDER:ROW`` or ``FOLDER:ROW=LABEL``.  Timings are whatever the runs met: a cell
trained beside other jobs is slower, which the folder's README has to say.
"""

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_spec(spec):
    """``FOLDER:ROW[=LABEL]`` -> (folder, row, label)."""
    target, _, label = spec.partition("=")
    folder, colon, row = target.rpartition(":")
    if not colon or not folder or not row:
        raise ValueError("%r: a row is FOLDER:ROW or FOLDER:ROW=LABEL" % spec)
    return folder, row, label or row


def load_cells(folder, row):
    """(dataset, test mode, the row's cells sorted by seed) from the folder's comparison.json."""
    path = os.path.join(folder, "comparison.json")
    try:
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
    except OSError as error:
        raise ValueError("%s: cannot read it (%s); a folder written by the comparison command holds one"
                         % (path, error.strerror or error)) from None
    except json.JSONDecodeError as error:
        raise ValueError("%s: not JSON (%s)" % (path, error)) from None
    cells = sorted((c for c in record.get("cells", []) if c.get("method") == row), key=lambda c: c["seed"])
    if not cells:
        raise ValueError("%s has no cells of row %r (rows: %s)" % (
            path, row, ", ".join(sorted({c.get("method", "?") for c in record.get("cells", [])})) or "none"))
    modes = {c.get("test_mode") for c in cells}
    if len(modes) != 1:
        raise ValueError("%s: row %r was tested under several protocols (%s)" % (path, row, sorted(modes)))
    return record.get("title", "").split(",")[0], modes.pop(), cells


def summarise(cells, metric):
    """The row's means over its seeds (mean and std as the comparison's tables) and its cost."""
    from recbole_derrd.evaluation import over_seeds
    from recbole_derrd.harness.comparison import _epochs_text

    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if len(values) == len(cells) else None

    test = over_seeds([c["test_result"] for c in cells], [metric])
    per_epoch = [c["fit_seconds"] / (c["last_epoch"] + 1)
                 if c.get("fit_seconds") is not None and c.get("last_epoch") is not None else None for c in cells]
    return {
        "seeds": [c["seed"] for c in cells],
        "test": test["mean"][metric], "test_std": test["std"][metric],
        "hit": mean([c["test_result"].get("hit@10") for c in cells]),
        "valid": mean([(c.get("best_valid_result") or {}).get(metric) for c in cells]),
        "epochs": ", ".join(_epochs_text(c) for c in cells),
        "per_epoch": mean(per_epoch), "to_best": mean([c.get("seconds_to_best") for c in cells]),
        "fit": mean([c.get("fit_seconds") for c in cells]),
    }


def table(specs, teacher=None, metric="ndcg@10"):
    """A markdown table: one row per spec, ratios to the teacher spec's mean test metric."""
    from recbole_derrd.harness.tables import markdown_table

    rows, protocol = [], None
    for spec in ([teacher] if teacher else []) + list(specs):
        folder, row, label = parse_spec(spec)
        dataset, mode, cells = load_cells(folder, row)
        if protocol is None:
            protocol = (dataset, mode, folder)
        elif (dataset, mode) != protocol[:2]:
            raise ValueError("%s is %s tested with %s, %s is %s with %s: rows must share the dataset and "
                             "protocol" % (folder, dataset, mode, protocol[2], protocol[0], protocol[1]))
        rows.append((label, folder, summarise(cells, metric)))
    reference = rows[0][2]["test"] if teacher else None
    name = metric.replace("ndcg@", "N@").replace("hit@", "H@")

    def number(value, digits=4):
        if value is None:
            return "-"
        text = "%.*f" % (digits, value)
        return text[1:] if text.startswith("0.") else text  # .4121, as the tables here write it

    def seconds(value):
        return "-" if value is None else "%.0f" % value

    header = ["row", "folder", "seeds", "test " + name, "test H@10", name + " / teacher", "valid " + name,
              "best / last epoch", "fit s / epoch", "s to best valid", "fit s"]
    return markdown_table(header, [
        [label, "`%s`" % os.path.basename(os.path.normpath(folder)), ",".join(map(str, s["seeds"])),
         "%s +- %s" % (number(s["test"]), number(s["test_std"])), number(s["hit"]),
         "-" if reference is None else "%.3f" % (s["test"] / reference), number(s["valid"]), s["epochs"],
         "-" if s["per_epoch"] is None else "%.2f" % s["per_epoch"], seconds(s["to_best"]), seconds(s["fit"])]
        for label, folder, s in rows])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rows", nargs="+", help="FOLDER:ROW or FOLDER:ROW=LABEL")
    parser.add_argument("--teacher", help="FOLDER:ROW whose mean test metric the ratios divide by (listed first)")
    parser.add_argument("--metric", default="ndcg@10")
    args = parser.parse_args(argv)
    try:
        print(table(args.rows, args.teacher, args.metric))
    except (ValueError, KeyError) as error:
        sys.exit("methods_table.py: %s" % (error if isinstance(error, ValueError) else "a cell lacks %s" % error))


if __name__ == "__main__":
    main()
