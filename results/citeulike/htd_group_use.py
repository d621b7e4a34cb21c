"""HTD's group use over a run, read from RecBole logs of HTD runs (the "HTD groups" summary that
ends each training line): one markdown row per sampled epoch, to see whether the groups collapse.

    python results/citeulike/htd_group_use.py LOG [LOG ...] [--every 25]

Each log's settings (htd_weight, htd_alpha, htd_num_groups, htd_anneal_epochs) head its table;
rows: epoch, the epoch's training seconds (a wall time: only comparable within one run), the
weighted HTD loss and the group summary.  Logs from before the summary existed print "-".
"""

import argparse
import re

COLOR = re.compile(r"\x1b\[[0-9;]*m")
KEYS = ("htd_weight", "htd_alpha", "htd_num_groups", "htd_anneal_epochs", "seed")
SETTING = re.compile(r"^(%s) = (\S+)" % "|".join(KEYS))  # a line of RecBole's config dump
LINE = re.compile(r"epoch (\d+) training \[time: ([0-9.]+)s, .*HTD loss: ([0-9.]+)\](.*)")


def read(path):
    """(settings, [(epoch, seconds, loss, summary)]) of one log."""
    settings, rows = {}, []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for raw in handle:
            line = COLOR.sub("", raw)
            found = SETTING.search(line.strip())
            if found:
                settings.setdefault(found.group(1), found.group(2))
            match = LINE.search(line)
            if match:
                summary = match.group(4).strip().replace("HTD groups: ", "") or "-"
                rows.append((int(match.group(1)), float(match.group(2)), float(match.group(3)), summary))
    return settings, rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logs", nargs="+")
    parser.add_argument("--every", type=int, default=25, help="one row every this many epochs (and the last)")
    args = parser.parse_args()
    for path in args.logs:
        try:
            settings, rows = read(path)
        except OSError as error:
            raise SystemExit("%s: cannot read it (%s)" % (path, error.strerror or error)) from None
        if not rows:
            raise SystemExit("%s: no HTD training lines (not an HTD run's log?)" % path)
        print("### " + ", ".join("%s %s" % (k, settings.get(k, "?")) for k in KEYS) + "\n")
        print("| epoch | train s | HTD loss | groups (users, items), same-group pairs |\n| --- | --- | --- | --- |")
        for epoch, seconds, loss, summary in rows:
            if epoch % args.every == 0 or epoch == rows[-1][0]:
                print("| %d | %.1f | %.4f | %s |" % (epoch, seconds, loss, summary))
        print()


if __name__ == "__main__":
    main()
