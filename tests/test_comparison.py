"""The one-command comparison end to end on the tiny dataset: cells, resume, tables, plot."""

import csv
import glob
import json
import os
import re

import numpy as np
import pytest

import recbole_derrd.harness.comparison as comparison


def test_comparison_writes_tables_and_plot_and_skips_finished_cells(tiny, tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    out = str(tmp_path / "cmp")
    settings = dict(tiny, rd_warmup_epochs=1)
    report = comparison.run_comparison(config_dict=settings, baselines=["Pop"], seeds=[0], out_dir=out)
    methods = list(comparison.DEFAULT_METHODS) + ["Pop"]
    for ext in ("md", "csv", "json", "png"):
        assert os.path.getsize(os.path.join(out, "comparison." + ext)) > 0
    table = open(os.path.join(out, "comparison.md")).read()
    assert all("| %s |" % m in table for m in methods)
    assert "**" in table and "Wilcoxon" in table
    with open(os.path.join(out, "comparison.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows] == methods
    assert all(0 <= float(r["ndcg@10_mean"]) <= 1 for r in rows)
    data = json.load(open(os.path.join(out, "comparison.json")))
    # every row's per-user test metrics are kept for later paired tests, the same the table used
    kept = json.load(open(os.path.join(out, "per-user.json")))
    assert kept["seeds"] == [0] and set(kept["rows"]) == set(methods) and kept["test_mode"] == "uni50"
    student_cell = report["cells"][("Student", 0)]["per_user"]
    assert kept["rows"]["Student"]["ndcg@10"] == pytest.approx(student_cell["ndcg@10"], abs=1e-6)
    assert kept["n_users"] == len(student_cell["hit@10"])
    against, = comparison.paired_between(out, "Student", out, "DERRD", metrics=("ndcg@10",))
    listed = [t for t in data["tests"] if (t["method"], t["reference"], t["metric"]) == ("DERRD", "Student", "ndcg@10")]
    assert against["p_value"] == pytest.approx(listed[0]["p_value"], rel=1e-3)
    # one teacher for the seed, prepared before the cells and shared by the five distilled methods
    assert list(data["teacher_seconds_this_run"]) == ["0"]
    assert len(glob.glob(os.path.join(out, "teachers", "*.pth"))) == 1
    assert {t["reference"] for t in data["tests"]} == {"Student", data["best_baseline"]}
    # the student's parameters are the deployable ones (no experts)
    params = {r["method"]: int(r["parameters"]) for r in rows}
    assert params["DERRD"] == params["DE"] == params["Student"] < params["Teacher"]
    # the teacher's row is its own test with the same negatives, not a training cell
    teacher = report["cells"][("Teacher", 0)]
    assert teacher["train_and_test_seconds"] is None and teacher["test_seconds"] > 0
    assert 0 <= teacher["best_epoch"] < settings["t_epochs"] and teacher["last_epoch"] is None
    # the Teacher cell prepared the seed's teacher itself: no separate pre-step loaded it again
    assert data["teacher_seconds_this_run"]["0"] == teacher["teacher_prepare_seconds"]
    assert "| Teacher |" in table and rows[0]["train_seconds"] == ""
    # bold marks the best student-sized method, never the teacher
    assert all("**" not in cell for cell in table.split("| Teacher |")[1].split("\n")[0].split("|"))
    # every trained cell says where its best and last evaluations were (tiny: eval every epoch)
    for (method, _), cell in report["cells"].items():
        if method not in ("Teacher", "Pop"):
            assert 0 <= cell["best_epoch"] <= cell["last_epoch"] < settings["epochs"], method
    # the teacher's lead over every row, on validation (its valid_metric) and on test N@10
    summary_rows = {r["method"]: r for r in report["summary"]["rows"]}
    student = report["cells"][("Student", 0)]
    assert teacher["best_valid_result"] == {"ndcg@10": pytest.approx(teacher["best_valid_result"]["ndcg@10"])}
    assert summary_rows["Student"]["gap_valid"] == pytest.approx(
        teacher["best_valid_result"]["ndcg@10"] - student["best_valid_result"]["ndcg@10"])
    assert summary_rows["Student"]["gap_test"] == pytest.approx(
        teacher["test_result"]["ndcg@10"] - student["test_result"]["ndcg@10"])
    assert summary_rows["Teacher"]["gap_test"] is None and "teacher lead, valid N@10" in table
    assert rows[1]["teacher_lead_test"] == "%.6f" % summary_rows["Student"]["gap_test"]
    # time to quality: every trained cell's clock to its best validation evaluation
    assert 0 < student["seconds_to_best"] <= student["fit_seconds"] <= student["train_and_test_seconds"]
    assert rows[1]["seconds_to_best"] == "%.2f" % student["seconds_to_best"] and rows[0]["seconds_to_best"] == ""
    assert "to best valid (s)" in table
    # training cost: one epoch's wall time, evaluations excluded
    assert 0 < student["seconds_per_epoch"] < student["fit_seconds"]
    assert rows[1]["seconds_per_epoch"] == "%.2f" % student["seconds_per_epoch"] and "s/epoch" in table
    # and its validation curve, one point per evaluation (tiny: every epoch)
    assert [p[0] for p in student["valid_curve"]] == list(range(student["last_epoch"] + 1))
    # every method saw the same test users
    cells = report["cells"]
    assert len({len(c["per_user"]["ndcg@10"]) for c in cells.values()}) == 1
    # the teacher against the student alone on validation, per user, reported once both cells
    # are there: before the first distilled cell trains
    first_out = capsys.readouterr().out
    valid_tests = report["summary"]["teacher_valid_tests"]
    assert [t["metric"] for t in valid_tests] == ["ndcg@10", "hit@10"]
    teacher_users, student_users = teacher["valid_per_user"]["ndcg@10"], student["valid_per_user"]["ndcg@10"]
    assert len(teacher_users) == len(student_users) == valid_tests[0]["n_users"] > 0
    assert valid_tests[0]["mean_diff"] == pytest.approx(np.mean(teacher_users) - np.mean(student_users))
    line = first_out.index("seed 0: teacher vs student alone on validation, ndcg@10")
    assert line < first_out.index("RD, seed 0: training")
    from recbole_derrd.harness.side_by_side import teacher_clearly_better
    assert ("little to transfer" in first_out) == (not teacher_clearly_better(valid_tests[0]))
    assert "On validation (the student alone's best model; no test data)" in table
    assert all("valid_per_user" not in c for c in data["cells"])  # kept in the cells' own files only
    assert "valid_per_user" not in cells[("DERRD", 0)]

    # finished cells are never recomputed
    def no_training(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(comparison, "run_cell", no_training)
    again = comparison.run_comparison(config_dict=settings, baselines=["Pop"], seeds=[0], out_dir=out)
    assert again["summary"]["rows"] == report["summary"]["rows"]
    assert "done before, skipped" in capsys.readouterr().out
    # ... unless their settings changed: then the run is refused, naming the key, before any training
    with pytest.raises(ValueError, match=r"DE-seed0.json was run with other settings \(settings.de_weight: "
                                         r"recorded 0.01, now 0.5\); remove it"):
        comparison.run_comparison(config_dict=dict(settings, de_weight=0.5), baselines=["Pop"], seeds=[0],
                                  out_dir=out)
    with pytest.raises(ValueError, match=r"Teacher-seed0.json was run with other settings \("
                                         r"teacher.settings.embedding_size: recorded 16, now 32\)"):
        comparison.run_comparison(config_dict=dict(settings, t_embedding_size=32), seeds=[0], out_dir=out)
    # paths and output switches are not settings of a result
    comparison.run_comparison(config_dict=dict(settings, show_progress=True, state="ERROR"), baselines=["Pop"],
                              seeds=[0], out_dir=out)
    # a cell written before cells recorded their settings is used as it is, with a note
    path = os.path.join(out, "cells", "RD-seed0.json")
    cell = json.load(open(path))
    del cell["settings"]
    json.dump(cell, open(path, "w"))
    comparison.run_comparison(config_dict=dict(settings, rd_weight=2.0), methods=["Student", "RD"], seeds=[0],
                              out_dir=out)
    assert "RD, seed 0: written before cells recorded their settings; not checked" in capsys.readouterr().out


def test_capped_cells_continue_with_a_larger_cap_only_when_asked(tiny, tmp_path, capsys):
    out = str(tmp_path / "cmp")
    settings = dict(tiny, epochs=2, stopping_step=10)  # two epochs: the cap ends every run
    first = comparison.run_comparison(config_dict=settings, methods=["Student", "DERRD"], seeds=[0], out_dir=out)
    teachers = sorted(glob.glob(os.path.join(out, "teachers", "*.pth")))
    for method in ("Student", "DERRD"):
        cell = first["cells"][(method, 0)]
        assert cell["cap_bound"] and cell["last_epoch"] == 1
    assert "continuing" not in capsys.readouterr().out
    # without the flag a capped cell is done; with it, it continues from epoch 2 to the new cap
    again = comparison.run_comparison(config_dict=settings, methods=["Student", "DERRD"], seeds=[0], out_dir=out,
                                      continue_capped=4)
    printed = capsys.readouterr().out
    assert printed.count("continuing from epoch 2 to the cap 4") == 2
    for method in ("Student", "DERRD"):
        before, after = first["cells"][(method, 0)], again["cells"][(method, 0)]
        assert after["last_epoch"] == 3 and after["continued_from"]["last_epoch"] == 1
        assert after["train_and_test_seconds"] > before["train_and_test_seconds"]
        assert after["resumed_from"] is None  # the time covers both processes
        saved = json.load(open(os.path.join(out, "cells", "%s-seed0.json" % method)))
        assert saved["last_epoch"] == 3
    # the teacher kept its own epochs: its cache entry was reused, not retrained
    assert sorted(glob.glob(os.path.join(out, "teachers", "*.pth"))) == teachers
    assert "+" in open(os.path.join(out, "comparison.md")).read().split("| Student |")[1].split("\n")[0]
    # a cell continued to the cap it now has is done
    comparison.run_comparison(config_dict=settings, methods=["Student", "DERRD"], seeds=[0], out_dir=out,
                              continue_capped=4)
    assert "continuing" not in capsys.readouterr().out


def test_interrupted_cell_restarts_from_its_last_checkpoint(tiny, tmp_path):
    out = str(tmp_path / "cmp")
    settings = dict(tiny, epochs=3)
    comparison.run_comparison(config_dict=settings, methods=["Student", "DE"], seeds=[0], out_dir=out)
    # as if the DE cell had been killed after its last epoch checkpoint: no result file yet
    os.remove(os.path.join(out, "cells", "DE-seed0.json"))
    last = glob.glob(os.path.join(out, "checkpoints", "DE-seed0", "*-last.pth"))
    assert last
    report = comparison.run_comparison(config_dict=settings, methods=["Student", "DE"], seeds=[0], out_dir=out)
    assert report["cells"][("DE", 0)]["resumed_from"] == last[0]
    assert report["cells"][("Student", 0)]["resumed_from"] is None
    # the table says which time started at a resume (it undercounts the training)
    table = open(os.path.join(out, "comparison.md")).read()
    de_row = next(line for line in table.splitlines() if line.startswith("| DE |"))
    student_row = next(line for line in table.splitlines() if line.startswith("| Student |"))
    assert re.search(r"\| \d+\* \|", de_row) and "*" not in student_row.replace("**", "")
    assert "resumed from a checkpoint" in table
    with open(os.path.join(out, "comparison.csv")) as handle:
        assert {r["method"]: r["resumed"] for r in csv.DictReader(handle)} == {"Student": "0", "DE": "1"}
    # an interrupted cell is never resumed under other settings; its checkpoints stay
    os.remove(os.path.join(out, "cells", "DE-seed0.json"))
    with pytest.raises(ValueError, match=r"DE, seed 0 was run with other settings \(settings.de_rows: recorded "
                                         r"'epoch', now 'batch'\); remove .*DE-seed0 to train it from scratch"):
        comparison.run_comparison(config_dict=dict(settings, de_rows="batch"), methods=["Student", "DE"], seeds=[0],
                                  out_dir=out)
    assert glob.glob(os.path.join(out, "checkpoints", "DE-seed0", "*-last.pth")) == last


def test_cell_settings_leave_out_paths_and_name_what_changed(tiny, tmp_path):
    from recbole.config import Config

    from recbole_derrd.harness.cell_settings import describe, differences
    from recbole_derrd.registration import PLUGIN_MODELS

    def description(**changes):
        config = Config(model="DERRD", config_dict=dict(tiny, **changes))
        return describe("DERRD", config, PLUGIN_MODELS["DERRD"])

    base = description()
    assert base["settings"]["rrd_weight"] == 0.001 and base["teacher"]["settings"]["embedding_size"] == 16
    assert "checkpoint_dir" not in base["settings"] and "data_path" not in base["settings"]
    assert description(checkpoint_dir=str(tmp_path / "elsewhere"), teacher_cache_dir=str(tmp_path)) == base
    assert differences(base, description(rrd_k=3, t_learning_rate=0.01)) == [
        "settings.rrd_k: recorded 5, now 3", "teacher.settings.learning_rate: recorded 0.001, now 0.01"]
    assert differences(base, description(epochs=9), ignore=("epochs",)) == []


def test_cell_settings_tell_teacher_checkpoints_apart_by_content(tiny, tmp_path):
    """Another teacher file is another teacher (its cells are not reused), a moved copy is the
    same one, and cells recorded before the digest existed are compared without it."""
    import hashlib
    import shutil

    from recbole.config import Config

    from recbole_derrd.harness.cell_settings import CHECKPOINT_DIGEST, describe, differences
    from recbole_derrd.registration import PLUGIN_MODELS

    first, second = tmp_path / "first.pth", tmp_path / "second.pth"
    first.write_bytes(b"teacher one")
    second.write_bytes(b"teacher two")
    moved = tmp_path / "moved" / "first.pth"
    moved.parent.mkdir()
    shutil.copy(first, moved)

    def description(path):
        config = Config(model="DERRD", config_dict=dict(tiny, teacher_checkpoint=str(path)))
        return describe("DERRD", config, PLUGIN_MODELS["DERRD"])

    one = description(first)
    assert one["teacher"][CHECKPOINT_DIGEST] == hashlib.sha256(b"teacher one").hexdigest()
    assert differences(one, description(moved)) == []
    changed = differences(one, description(second))
    assert len(changed) == 1 and changed[0].startswith("teacher.%s: recorded '" % CHECKPOINT_DIGEST)
    older = dict(one, teacher={k: v for k, v in one["teacher"].items() if k != CHECKPOINT_DIGEST})
    assert differences(older, description(second)) == []
    # a missing file is left to the teacher loader's own error
    assert CHECKPOINT_DIGEST not in description(tmp_path / "absent.pth")["teacher"]


def test_teacher_lead_against_hand_values():
    def cell(method, seed, test, valid):
        return {"method": method, "seed": seed, "model": "BPR", "parameters": 1, "test_result": {"ndcg@10": test},
                "best_valid_result": None if valid is None else {"ndcg@10": valid},
                "train_and_test_seconds": None, "inference_seconds_256_users": None, "resumed_from": None,
                "best_epoch": 1, "last_epoch": 2, "per_user": {"ndcg@10": [test], "hit@10": [test]}}

    cells = {("Teacher", 0): cell("Teacher", 0, 0.50, 0.40), ("Teacher", 1): cell("Teacher", 1, 0.60, 0.44),
             ("Student", 0): cell("Student", 0, 0.40, 0.35), ("Student", 1): cell("Student", 1, 0.45, 0.30)}
    rows = {r["method"]: r for r in comparison.summarise(cells, ["Teacher", "Student"], [0, 1])["rows"]}
    assert rows["Student"]["gap_test"] == pytest.approx(((0.50 - 0.40) + (0.60 - 0.45)) / 2)
    assert rows["Student"]["gap_valid"] == pytest.approx(((0.40 - 0.35) + (0.44 - 0.30)) / 2)
    # a teacher cell written before validation scores were kept: no validation lead
    cells[("Teacher", 1)]["best_valid_result"] = None
    rows = {r["method"]: r for r in comparison.summarise(cells, ["Teacher", "Student"], [0, 1])["rows"]}
    assert rows["Student"]["gap_valid"] is None and rows["Student"]["gap_test"] is not None
    # time to best validation: the median over seeds, none when a seed's cell lacks it
    assert rows["Student"]["seconds_to_best"] is None
    cells[("Student", 0)]["seconds_to_best"], cells[("Student", 1)]["seconds_to_best"] = 30.0, 10.0
    rows = {r["method"]: r for r in comparison.summarise(cells, ["Teacher", "Student"], [0, 1])["rows"]}
    assert rows["Student"]["seconds_to_best"] == 20.0
    cells[("Student", 0)]["seconds_per_epoch"], cells[("Student", 1)]["seconds_per_epoch"] = 3.0, 1.0
    rows = {r["method"]: r for r in comparison.summarise(cells, ["Teacher", "Student"], [0, 1])["rows"]}
    assert rows["Student"]["seconds_per_epoch"] == 2.0 and rows["Teacher"]["seconds_per_epoch"] is None


def test_teacher_validation_test_and_warning_against_hand_values():
    """Per user, averaged over seeds; the warning exactly when the teacher's validation NDCG@10
    is not significantly above the student alone's."""
    def cell(method, seed, valid):
        return {"method": method, "seed": seed, "valid_per_user": {"ndcg@10": valid, "hit@10": valid}}

    teacher = [0.9, 0.8, 0.7, 0.9, 0.6, 0.8, 0.7, 0.9, 0.8, 0.6]
    student = [0.1, 0.2, 0.3, 0.1, 0.2, 0.4, 0.3, 0.1, 0.2, 0.4]
    cells = {("Teacher", 0): cell("Teacher", 0, teacher), ("Teacher", 1): cell("Teacher", 1, teacher),
             ("Student", 0): cell("Student", 0, student), ("Student", 1): cell("Student", 1, [0.0] * 10)}
    tests = comparison.teacher_validation_tests(cells, ["Teacher", "Student"], [0, 1])
    # student averaged over its seeds: .05 .1 .15 .05 .1 .2 .15 .05 .1 .2 (mean .115); teacher .77
    assert tests[0]["metric"] == "ndcg@10" and tests[0]["n_users"] == 10
    assert tests[0]["mean_diff"] == pytest.approx(0.77 - 0.115)
    assert tests[0]["p_value"] < 0.01  # ten users, all better: exact two-sided p = 2 / 2**10
    assert comparison.teacher_warning(tests) is None
    # a teacher level with its student: the one-line warning, naming the remedy
    cells[("Teacher", 0)]["valid_per_user"] = cells[("Teacher", 1)]["valid_per_user"] = {
        "ndcg@10": student, "hit@10": student}
    cells[("Student", 1)]["valid_per_user"] = {"ndcg@10": student, "hit@10": student}
    warning = comparison.teacher_warning(comparison.teacher_validation_tests(cells, ["Teacher", "Student"], [0, 1]))
    assert warning.startswith("Warning: the teacher is not significantly better") and "tune_teacher" in warning
    assert "\n" not in warning
    # cells written before the validation metrics were kept, or no Student row: no test
    del cells[("Student", 1)]["valid_per_user"]
    assert comparison.teacher_validation_tests(cells, ["Teacher", "Student"], [0, 1]) is None
    assert comparison.teacher_validation_tests(cells, ["Teacher", "DERRD"], [0]) is None
    assert comparison.teacher_warning(None) is None


def test_seed_statistics_against_hand_values():
    """The mean +- std (population std, as numpy) over seeds and the per-user average over seeds
    that both the comparison and run_seeds report."""
    from recbole_derrd.evaluation import over_seeds, per_user_over_seeds

    stats = over_seeds([{"ndcg@10": 0.2, "hit@10": 0.5}, {"ndcg@10": 0.4, "hit@10": 0.5}],
                       ["ndcg@10", "hit@10"])
    assert stats["mean"] == pytest.approx({"ndcg@10": 0.3, "hit@10": 0.5})
    assert stats["std"] == pytest.approx({"ndcg@10": 0.1, "hit@10": 0.0})
    assert stats["per_seed"] == {"ndcg@10": [0.2, 0.4], "hit@10": [0.5, 0.5]}
    users = per_user_over_seeds([{"ndcg@10": [1.0, 0.0], "hit@10": [1.0, 0.0]},
                                 {"ndcg@10": [0.5, 0.0], "hit@10": [1.0, 1.0]}])
    assert users["ndcg@10"].tolist() == [0.75, 0.0] and users["hit@10"].tolist() == [1.0, 0.5]


def test_cells_share_a_given_teacher_cache():
    """A run's own teacher_cache_dir is kept (several comparisons, or the benchmark's rows,
    share one cached teacher); without one the teachers live under the comparison's folder."""
    from recbole_derrd.harness.comparison import _settings

    given = _settings({"teacher_cache_dir": "/shared/teachers", "epochs": 3}, 1, "/runs/a", "DERRD-seed1")
    assert given["teacher_cache_dir"] == "/shared/teachers" and given["seed"] == 1 and given["epochs"] == 3
    assert given["checkpoint_dir"] == os.path.join("/runs/a", "checkpoints", "DERRD-seed1")
    assert _settings(None, 0, "/runs/a", "Student-seed0")["teacher_cache_dir"] == os.path.join("/runs/a", "teachers")


def test_each_pair_is_tested_once_against_the_student_first():
    """With a later method as the only distillation row it is also the best baseline: its test
    against the student alone appears once, as "HTD vs Student", not again reversed."""
    def cell(method, values):
        return {"method": method, "seed": 0, "model": "BPR", "parameters": 1, "test_result": {"ndcg@10": 0.3},
                "best_valid_result": None, "train_and_test_seconds": None, "inference_seconds_256_users": None,
                "resumed_from": None, "best_epoch": 1, "last_epoch": 2,
                "per_user": {"ndcg@10": values, "hit@10": values}}

    cells = {("Teacher", 0): cell("Teacher", [0.9, 0.8, 0.7, 0.9, 0.6, 0.8]),
             ("Student", 0): cell("Student", [0.1, 0.2, 0.3, 0.1, 0.2, 0.4]),
             ("HTD", 0): cell("HTD", [0.2, 0.3, 0.5, 0.2, 0.3, 0.6])}
    summary = comparison.summarise(cells, ["Teacher", "Student", "HTD"], [0])
    assert summary["best_baseline"] == "HTD"
    pairs = [(t["method"], t["reference"]) for t in summary["tests"] if t["metric"] == "ndcg@10"]
    assert pairs == [("Teacher", "Student"), ("Teacher", "HTD"), ("HTD", "Student")]
    assert [t["mean_diff"] for t in summary["tests"] if t["method"] == "HTD" and t["metric"] == "ndcg@10"] \
        == [pytest.approx(0.8 / 6)]  # per-user gaps .1 .1 .2 .1 .1 .2


def _per_user_cells(values):
    """cells {(method, seed): {"per_user": ..., "test_mode": ...}} from {(method, seed): ndcg list}."""
    return {key: {"test_mode": "uni499", "per_user": {"ndcg@10": v, "hit@10": [float(x > 0) for x in v]}}
            for key, v in values.items()}


def test_per_user_record_averages_over_the_seeds_every_row_has(tmp_path):
    cells = _per_user_cells({("A", 0): [0.0, 1.0, 0.5], ("A", 1): [1.0, 1.0, 0.0], ("A", 2): [0.2, 0.2, 0.2],
                             ("B", 0): [0.5, 0.5, 0.5], ("B", 1): [0.0, 0.25, 1.0]})
    cells[("Pop", 0)] = {"test_mode": "uni499"}  # a cell without per-user metrics is left out
    record = comparison.per_user_record(cells, "citeulike, seeds [0, 1, 2], test mode uni499")
    assert record["seeds"] == [0, 1] and record["n_users"] == 3 and record["dataset"] == "citeulike"
    assert record["rows"]["A"]["ndcg@10"] == [0.5, 1.0, 0.25]  # seed 2 is not shared by B
    assert record["rows"]["B"]["ndcg@10"] == [0.25, 0.375, 0.75]
    assert record["rows"]["B"]["hit@10"] == [0.5, 1.0, 1.0]


def test_paired_between_two_folders_checks_they_are_comparable(tmp_path):
    from recbole_derrd.evaluation import paired_test

    a = [i / 32 for i in range(20)]  # exact in the record's 6 decimals
    b = [v + (1 / 32 if i % 3 else -1 / 64) for i, v in enumerate(a)]
    for name, values in (("one", {("Student", 0): a}), ("two", {("IRRRD", 0): b})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "per-user.json").write_text(json.dumps(comparison.per_user_record(
            _per_user_cells(values), "citeulike, seeds [0], test mode uni499")))
    result, hits = comparison.paired_between(str(tmp_path / "one"), "Student", str(tmp_path / "two"), "IRRRD")
    assert (result["metric"], hits["metric"]) == ("ndcg@10", "hit@10")
    expected = paired_test({"ndcg@10": a}, {"ndcg@10": b}, "ndcg@10")
    assert result["p_value"] == pytest.approx(expected["p_value"]) and result["mean_diff"] == pytest.approx(
        sum(y - x for x, y in zip(a, b)) / 20)
    assert (result["method"], result["reference"]) == ("IRRRD", "Student")
    with pytest.raises(ValueError, match="no row 'DERRD'"):
        comparison.paired_between(str(tmp_path / "one"), "Student", str(tmp_path / "two"), "DERRD")
    (tmp_path / "three").mkdir()
    (tmp_path / "three" / "per-user.json").write_text(json.dumps(comparison.per_user_record(
        _per_user_cells({("DERRD", 1): b}), "citeulike, seeds [1], test mode uni499")))
    with pytest.raises(ValueError, match="differ in seeds"):
        comparison.paired_between(str(tmp_path / "one"), "Student", str(tmp_path / "three"), "DERRD")
    # the script: one line per metric; a refused pair is one line and a non-zero exit
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "paired.py")
    done = subprocess.run([sys.executable, script, str(tmp_path / "one"), "Student", str(tmp_path / "two"), "IRRRD"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.startswith("IRRRD - Student, ndcg@10: +0.0")
    refused = subprocess.run([sys.executable, script, str(tmp_path / "one"), "Student", str(tmp_path / "three"),
                              "DERRD"], capture_output=True, text=True)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and "differ in seeds" in refused.stderr


def test_methods_table_puts_rows_of_folders_side_by_side(tmp_path):
    """results/methods_table.py: means over a row's seeds, the ratio to the teacher row's mean,
    cost from the cells (fit seconds / epochs trained); refuses a missing row or another protocol."""
    import subprocess
    import sys

    def cell(method, seed, test, valid=None, best=None, last=None, fit=None, to_best=None, mode="uni499"):
        return {"method": method, "seed": seed, "test_mode": mode, "test_result": {"ndcg@10": test, "hit@10": 2 * test},
                "best_valid_result": None if valid is None else {"ndcg@10": valid}, "best_epoch": best,
                "last_epoch": last, "fit_seconds": fit, "seconds_to_best": to_best}

    def folder(name, title, cells):
        (tmp_path / name).mkdir()
        (tmp_path / name / "comparison.json").write_text(json.dumps({"title": title, "cells": cells}))
        return str(tmp_path / name)

    one = folder("one", "citeulike, seeds [0, 1], test mode uni499",
                 [cell("Teacher", 0, 0.40, 0.5, 99), cell("Teacher", 1, 0.44, 0.5, 99),
                  cell("IRRRD", 1, 0.30, 0.35, 9, 19, fit=60.0, to_best=30.0),
                  cell("IRRRD", 0, 0.34, 0.33, 4, 9, fit=20.0, to_best=10.0)])
    two = folder("two", "citeulike, seeds [0], test mode uni499", [cell("DERRD", 0, 0.21, 0.25, 4, 9)])
    full = folder("full", "citeulike, seeds [0], test mode full", [cell("DERRD", 0, 0.1, mode="full")])
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "methods_table.py")
    done = subprocess.run([sys.executable, script, "--teacher", one + ":Teacher", one + ":IRRRD=IR-RRD, tuned",
                           two + ":DERRD"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("| row | folder | seeds | test N@10 |") and len(lines) == 5
    # teacher: mean .42, std .02 (ddof 0); IR-RRD seeds sorted: epochs "4/9, 9/19"; per epoch
    # (20/10 + 60/20) / 2 = 2.5 s; to best (10 + 30) / 2; fit (20 + 60) / 2; ratio .32 / .42
    assert lines[2] == "| Teacher | `one` | 0,1 | .4200 +- .0200 | .8400 | 1.000 | .5000 | 99/-, 99/- | - | - | - |"
    assert lines[3] == ("| IR-RRD, tuned | `one` | 0,1 | .3200 +- .0200 | .6400 | %.3f | .3400 | 4/9, 9/19 | 2.50 "
                        "| 20 | 40 |" % (0.32 / 0.42))
    assert lines[4] == "| DERRD | `two` | 0 | .2100 +- .0000 | .4200 | 0.500 | .2500 | 4/9 | - | - | - |"
    for args, message in (([one + ":CD"], "has no cells of row 'CD' (rows: IRRRD, Teacher)"),
                          ([one + ":IRRRD", full + ":DERRD"], "must share the dataset and protocol"),
                          ([str(tmp_path / "none") + ":CD"], "comparison.json: cannot read it"),
                          (["IRRRD"], "a row is FOLDER:ROW")):
        refused = subprocess.run([sys.executable, script] + args, capture_output=True, text=True)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1 and message in refused.stderr, refused.stderr
