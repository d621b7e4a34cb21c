"""Wilcoxon per user between rows of two comparison folders (their ``per-user.json``).

The comparison command tests each row against the student alone and the best baseline of the
same run; this tests rows of separate runs against each other, e.g. a method tuned later against
the best method of an earlier folder. Both folders must hold the same dataset, test protocol,
seeds and users (checked); the per-user values are each row's means over those seeds.

    python results/paired.py results/citeulike/irrrd-3seeds IRRRD results/citeulike/derrd-3seeds DERRD
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference_folder")
    parser.add_argument("reference_row")
    parser.add_argument("folder")
    parser.add_argument("row")
    args = parser.parse_args(argv)
    from recbole_derrd.harness.comparison import paired_between

    try:
        results = paired_between(args.reference_folder, args.reference_row, args.folder, args.row)
    except (OSError, ValueError) as error:
        sys.exit("paired.py: %s" % error)
    for r in results:
        print("%s - %s, %s: %+.4f per user (Wilcoxon p = %.2g, %d users)" % (
            r["method"], r["reference"], r["metric"], r["mean_diff"], r["p_value"], r["n_users"]))


if __name__ == "__main__":
    main()
