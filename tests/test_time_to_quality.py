"""The time-to-quality benchmark end to end on small synthetic data, and its summary line."""

import json
import os
import re
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture
def ttq(monkeypatch):
    monkeypatch.syspath_prepend(BENCHMARKS)
    import time_to_quality

    return time_to_quality


SMALL = ["--set=%s" % pair for pair in (
    "t_epochs=2", "embedding_size=8", "t_embedding_size=16", "de_num_experts=4", "htd_num_groups=4", "rrd_top_n=20",
    "rrd_k=5", "rrd_l=5", "ir_top_n=3", "ir_k=2", "ir_l=2", "rce_k=3", "rce_l=3", "rce_top_m=10", "eval_step=1",
    "train_batch_size=256",
    "state=WARNING")]


def test_runs_every_method_side_by_side_and_resumes(ttq, workdir, capsys):
    out = str(workdir / "ttq")
    argv = ["--dataset=ml1m-shaped", "--shape=60,150,1500", "--data_dir=%s" % (workdir / "data"),
            "--epochs=2", "--reference_epochs=1", "--out_dir=%s" % out, "--seeds=0",
            "--variant=rows-epoch:de_rows=epoch"] + SMALL
    ttq.main(argv)
    printed = capsys.readouterr().out
    data = json.load(open(os.path.join(out, "time_to_quality.json")))
    labels = [c["label"] for c in data["cells"]]
    assert labels == ["Student", "RRD", "DE", "DERRD", "IRRRD", "DEIRRRD", "HTD", "RCEKD", "rows-epoch",
                      "reference"]
    for cell in data["cells"]:
        assert 0 < cell["seconds_to_best"] <= cell["fit_seconds"], cell["label"]
        assert 0 <= cell["test_result"]["ndcg@10"] <= 1
    reference = data["cells"][-1]
    assert reference["settings"]["kd_implementation"] == "reference" and reference["last_epoch"] == 0
    assert data["cells"][8]["settings"] == {"de_rows": "epoch"}
    assert "| reference (extrapolated from 1 epochs) |" in printed and "| Student | 1 |" in printed
    assert "1.00x" in printed.split("| Student |")[1].split("\n")[0]
    # a one-dataset record ends with the summary line too, the other dataset n/a
    assert re.search(r"time to quality: DE-RRD/student n/ax \(CiteULike\), \d+\.\d\dx \(ML-1M-shaped\); "
                     r"reference/DE-RRD n/ax \(CiteULike\)\n", printed)
    # a second run finds every cell done and trains nothing
    ttq.main(argv)
    assert capsys.readouterr().out.count("done before") == 10


def test_summary_line_has_the_recorded_form(ttq):
    line = ttq.summary_line({"DERRD": 300.0, "Student": 150.0, "reference": 1800.0}, {"DERRD": 50.0, "Student": 40.0})
    assert line == ("time to quality: DE-RRD/student 2.00x (CiteULike), 1.25x (ML-1M-shaped); "
                    "reference/DE-RRD 6.00x (CiteULike)")
    assert re.fullmatch(r"time to quality: DE-RRD/student \S+x \(CiteULike\), \S+x \(ML-1M-shaped\); "
                        r"reference/DE-RRD \S+x \(CiteULike\)", ttq.summary_line(None, {}))


def test_summary_row_lets_a_variant_stand_for_derrd(ttq):
    times = {"Student": 100.0, "DERRD": 210.0, "every32cap64": 160.0}
    chosen = ttq.summary_row(times, "every32cap64", "ml1m-shaped")
    assert chosen["DERRD"] == 160.0 and chosen["every32cap64"] == 160.0 and times["DERRD"] == 210.0
    assert "1.60x (ML-1M-shaped)" in ttq.summary_line(None, chosen)
    with pytest.raises(SystemExit, match="--derrd_row ml1m-shaped=nope: no such row"):
        ttq.summary_row(times, "nope", "ml1m-shaped")


def test_summary_reads_two_runs_and_refuses_an_unknown_dataset(ttq, tmp_path, capsys):
    def run_dir(name, dataset, times):
        folder = tmp_path / name
        folder.mkdir()
        cells = [{"label": label, "seed": 0, "seconds_to_best": t, "fit_seconds": t, "best_epoch": 9,
                  "last_epoch": 9, "best_valid_result": {"ndcg@10": 0.3}, "test_result": {"ndcg@10": 0.3}}
                 for label, t in times.items()]
        (folder / "time_to_quality.json").write_text(json.dumps(
            {"dataset": dataset, "seeds": [0], "reference_epochs": 0, "cells": cells}))
        return str(folder)

    cite = run_dir("c", "citeulike", {"Student": 100.0, "DERRD": 150.0})
    ml1m = run_dir("m", "ml1m-shaped", {"Student": 100.0, "DERRD": 210.0, "every32cap64": 160.0})
    ttq.main(["--summary", cite, ml1m, "--derrd_row", "ml1m-shaped=every32cap64"])
    out = capsys.readouterr().out
    assert "DE-RRD in the summary line (ml1m-shaped): the row every32cap64." in out
    assert "DE-RRD/student 1.50x (CiteULike), 1.60x (ML-1M-shaped)" in out
    with pytest.raises(SystemExit, match="--derrd_row: no run of ml-1m among"):
        ttq.main(["--summary", cite, ml1m, "--derrd_row", "ml-1m=every32cap64"])
    # one run alone (e.g. a new method's record): its table, the other dataset n/a
    ttq.main(["--summary", cite])
    out = capsys.readouterr().out
    assert "| DERRD | 1 |" in out and "DE-RRD/student 1.50x (CiteULike), n/ax (ML-1M-shaped)" in out
    assert "ml1m-shaped" not in out.split("time to quality:")[0]
    with pytest.raises(SystemExit, match="--summary: two runs of citeulike"):
        ttq.main(["--summary", cite, cite])


def test_table_against_hand_values(ttq):
    def cell(label, seed, to_best, fit, best, last, valid, test):
        return {"label": label, "seed": seed, "seconds_to_best": to_best, "fit_seconds": fit, "best_epoch": best,
                "last_epoch": last, "best_valid_result": {"ndcg@10": valid}, "test_result": {"ndcg@10": test}}

    cells = {("Student", 0): cell("Student", 0, 100.0, 150.0, 99, 119, 0.37, 0.36),
             ("Student", 1): cell("Student", 1, 140.0, 160.0, 139, 159, 0.38, 0.37),
             ("DERRD", 0): cell("DERRD", 0, 300.0, 400.0, 149, 169, 0.40, 0.39),
             ("DERRD", 1): cell("DERRD", 1, 200.0, 300.0, 99, 119, 0.39, 0.38),
             ("reference", 0): cell("reference", 0, 5.0, 50.0, 4, 4, 0.1, 0.1)}
    lines, to_best = ttq.table(cells, [0, 1], "citeulike", reference_epochs=5)
    assert to_best["Student"] == 120.0 and to_best["DERRD"] == 250.0
    # reference: 50 s / 5 epochs = 10 s per epoch, times DE-RRD's median 124 + 1 epochs
    assert to_best["reference"] == pytest.approx(10.0 * 125)
    derrd = [l for l in lines if l.startswith("| DERRD |")][0]
    assert "| 250 | 40% | 350 | 149/169, 99/119 | 0.3950 | 0.3850 | 2.08x |" in derrd


def test_bad_variant_and_set_are_one_line_exits(ttq):
    with pytest.raises(SystemExit, match="expected label:key=value"):
        ttq.parse_variants(["DERRD:de_rows=epoch"])
    with pytest.raises(SystemExit, match="is not key=value"):
        ttq.parse_pairs(["de_rows"], "--set")
    assert ttq.parse_pairs(["de_max_rows=256", "de_rows=epoch"], "--set") == {"de_max_rows": 256, "de_rows": "epoch"}
    assert sys.modules["time_to_quality"] is ttq


def test_methods_subset_runs_only_those(ttq, workdir, capsys):
    out = str(workdir / "ttq-subset")
    ttq.main(["--dataset=ml1m-shaped", "--shape=60,150,1500", "--data_dir=%s" % (workdir / "data"),
              "--epochs=1", "--reference_epochs=1", "--out_dir=%s" % out, "--seeds=0",
              "--methods=DERRD,Student", "--set=de_rows=epoch"] + SMALL)
    data = json.load(open(os.path.join(out, "time_to_quality.json")))
    assert [c["label"] for c in data["cells"]] == ["Student", "DERRD", "reference"]
    # --set reaches every run but the reference, which keeps the paper's rows
    assert data["cells"][2]["settings"]["de_rows"] == "batch"


def test_every_row_distils_the_seed_s_one_teacher(ttq, workdir):
    """The reference's shorter cap is its own, not its teacher's (t_epochs is not left to fall
    back to a row's epochs), and a row whose settings reach the teacher stops the run."""
    out = str(workdir / "ttq-teacher")
    small = [a for a in SMALL if "t_epochs" not in a]
    argv = ["--dataset=ml1m-shaped", "--shape=60,150,1500", "--data_dir=%s" % (workdir / "data"),
            "--epochs=2", "--reference_epochs=1", "--out_dir=%s" % out, "--seeds=0", "--methods=Student,DERRD"]
    ttq.main(argv + small)
    assert len([n for n in os.listdir(os.path.join(out, "teachers")) if n.endswith(".pth")]) == 1
    with pytest.raises(SystemExit, match=r"teacher-lr, seed 0: its settings \{'learning_rate': 0.01\} trained a "
                                         r"teacher of its own"):
        ttq.main(argv + small + ["--variant=teacher-lr:learning_rate=0.01"])
    assert not os.path.exists(os.path.join(out, "teacher-lr", "DERRD-seed0.json"))


def test_bad_methods_are_one_line_exits(ttq):
    with pytest.raises(SystemExit, match="unknown FTD"):
        ttq.parse_methods("Student,FTD", 0, False)
    with pytest.raises(SystemExit, match="Student is required"):
        ttq.parse_methods("DERRD", 0, False)
    with pytest.raises(SystemExit, match="DERRD is required"):
        ttq.parse_methods("Student,RRD", 5, False)
    assert ttq.parse_methods("DERRD,Student", 5, False) == ("Student", "DERRD")


def test_synthetic_data_kinds_have_names_of_their_own(ttq, workdir):
    """The low-rank data (the default) and the popularity-only data never share a file."""
    low, _ = ttq.ml1m_shaped(str(workdir / "data"), (60, 150, 1500))
    flat, _ = ttq.ml1m_shaped(str(workdir / "data"), (60, 150, 1500), synthetic="popularity")
    assert low == "synthetic_60_150_1500_low_rank_32_2.5" and flat == "synthetic_60_150_1500"
    files = [workdir / "data" / name / (name + ".inter") for name in (low, flat)]
    assert files[0].read_text() != files[1].read_text()
