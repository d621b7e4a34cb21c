"""Print our CiteULike tables beside the paper's Table 2 (phi = 0.1, LOO + 499 negatives).

    python results/citeulike/beside_paper.py results/citeulike/bpr-seed0/comparison.json ...
    python results/citeulike/beside_paper.py --teacher .4313 results/citeulike/rce-3seeds/comparison.json

Reads the ``comparison.json`` files written by ``run_recbole_derrd.py --compare`` and prints, per
method, our mean (over the file's seeds) and the paper's value for H@5, N@5, H@10, N@10, with
the relative gain over the student alone in each (the paper's "improvement" view) and the
fraction of the teacher's test N@10 reached (issue 18's measure): the file's Teacher row, or
``--teacher`` for a file run from a recorded teacher checkpoint without its row.
"""

import argparse
import json

METRICS = ("hit@5", "ndcg@5", "hit@10", "ndcg@10")
#: Kang et al. (CIKM 2020), Table 2, CiteULike, phi = 0.1 (transcribed in the issue tracker).
PAPER = {
    "BPR": {
        "Teacher": (.5135, .3970, .6185, .4310), "Student": (.4441, .3319, .5541, .3691),
        "RD": (.4533, .3395, .5601, .3740), "CD": (.4550, .3404, .5607, .3746),
        "DE": (.4817, .3625, .5916, .3977), "RRD": (.4622, .3461, .5703, .3809),
        "DERRD": (.4843, .3632, .5966, .3989),
        # not in the paper: the authors' own IR-RRD run on the same split and protocol
        # (SeongKu-Kang/DE-RRD_CIKM20 at 5319438, logs/IR_RRD.log, its test line at the best epoch)
        "IRRRD": (.4947, .3747, .5951, .4072),
    },
    "NeuMF": {
        "Teacher": (.4790, .3684, .5827, .4020), "Student": (.3867, .2865, .4909, .3202),
        "DERRD": (.4758, .3518, .5805, .3856),
    },
}


def table(path, backbone=None, teacher=None):
    """The file's rows beside the paper's; the backbone (BPR / NeuMF) is the student row's model;
    ``teacher``: the teacher's test N@10 where the file has no Teacher row."""
    with open(path, encoding="utf-8") as handle:
        data = json.load(handle)
    if backbone is None:
        backbone = next((row["model"] for row in data["rows"] if row["method"] == "Student"), "BPR")
    paper = PAPER[backbone]
    ours = {row["method"]: row for row in data["rows"]}
    names = [m.replace("hit", "H").replace("ndcg", "N") for m in METRICS]
    lines = ["### %s (%s)" % (data["title"], backbone), "",
             "| method | " + " | ".join("%s ours | %s paper" % (n, n) for n in names)
             + " | N@10 vs student: ours | paper | N@10 / teacher |", "|" + " --- |" * (2 * len(METRICS) + 4)]
    student = ours.get("Student")
    if "Teacher" in ours:
        teacher = ours["Teacher"]["mean"]["ndcg@10"]
    for method, row in ours.items():
        cells = []
        for i, metric in enumerate(METRICS):
            reported = paper.get(method)
            mean = "%.4f" % row["mean"][metric]
            if row["std"][metric] > 0:  # several seeds
                mean += " +- %.4f" % row["std"][metric]
            cells.append("%s | %s" % (mean, "%.4f" % reported[i] if reported else "-"))
        gain_ours = gain_paper = "-"
        if student and method != "Student":
            gain_ours = "%+.1f%%" % (100 * (row["mean"]["ndcg@10"] / student["mean"]["ndcg@10"] - 1))
            if method in paper:
                gain_paper = "%+.1f%%" % (100 * (paper[method][3] / paper["Student"][3] - 1))
        of_teacher = "-" if not teacher or method == "Teacher" else "%.3f" % (row["mean"]["ndcg@10"] / teacher)
        lines.append("| %s | %s | %s | %s | %s |" % (method, " | ".join(cells), gain_ours, gain_paper, of_teacher))
    if "IRRRD" in ours:
        lines.append("\nIRRRD's reference value is the authors' logged run, not the paper's table.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("files", nargs="+", help="comparison.json files")
    parser.add_argument("--teacher", type=float, help="the teacher's test N@10 where a file has no Teacher row")
    args = parser.parse_args()
    for path in args.files:
        print(table(path, teacher=args.teacher))
