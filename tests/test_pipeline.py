"""End to end through RecBole's real pipeline on a tiny generated dataset (no mocks of RecBole)."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from recbole.quick_start import run_recbole as stock_run_recbole
from recbole.utils import get_model

import recbole_derrd.teacher as teacher_module
from recbole_derrd.checkpoints import CheckpointError
from recbole_derrd.harness.side_by_side import run_side_by_side
from recbole_derrd.quick_start import load_data_and_model, run_recbole

from conftest import ROOT, write_tiny_dataset


def teacher_files(config_dict):
    folder = os.path.join(config_dict["checkpoint_dir"], "teachers")
    return sorted(f for f in os.listdir(folder) if f.endswith(".pth"))


def run_subprocess(code, cwd, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    return proc


def test_stock_run_recbole_trains_caches_and_reuses_teacher(tiny, monkeypatch):
    first = stock_run_recbole(model="DERRD", config_dict=dict(tiny), saved=True)
    metrics = first["test_result"]
    assert set(metrics) >= {"hit@10", "ndcg@10", "mrr@10"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert len(teacher_files(tiny)) == 1

    def no_training(*args, **kwargs):
        raise AssertionError("the cached teacher should have been reused")

    monkeypatch.setattr(teacher_module, "train_teacher", no_training)
    second = stock_run_recbole(model="DERRD", config_dict=dict(tiny), saved=True)
    # A freshly trained and a cached teacher give the identical student.
    assert second["test_result"] == first["test_result"]
    assert second["best_valid_result"] == first["best_valid_result"]


def test_changed_teacher_settings_get_a_new_cache_entry(tiny):
    run_recbole("RRD", config_dict=dict(tiny, epochs=1), saved=False)
    run_recbole("RRD", config_dict=dict(tiny, epochs=1, t_learning_rate=0.01), saved=False)
    assert len(teacher_files(tiny)) == 2


def test_teacher_checkpoint_is_loaded_and_verified(tiny, tmp_path):
    run_recbole("RRD", config_dict=dict(tiny, epochs=1), saved=False)
    cached = os.path.join(tiny["checkpoint_dir"], "teachers", teacher_files(tiny)[0])
    given = dict(tiny, epochs=1, teacher_checkpoint=cached, teacher_cache_dir=str(tmp_path / "unused"))
    result = run_recbole("RRD", config_dict=given, saved=False)
    assert result["test_result"]["ndcg@10"] >= 0
    assert not os.path.exists(tmp_path / "unused")

    other = write_tiny_dataset(str(tmp_path / "other"), seed=99)
    with pytest.raises(CheckpointError, match="data.train_interactions"):
        run_recbole("RRD", config_dict=dict(given, data_path=other), saved=False)
    with pytest.raises(CheckpointError, match="t_ settings"):
        run_recbole("RRD", config_dict=dict(given, t_embedding_size=32), saved=False)
    with pytest.raises(CheckpointError, match="checkpoint file not found: .*nope.pth"):
        run_recbole("RRD", config_dict=dict(given, teacher_checkpoint="nope.pth"), saved=False)


def test_teacher_validation_score_is_kept_only_under_its_own_protocol(tiny, tmp_path):
    """A teacher trained under sampled ranking and given to a full-ranking run: its stored best
    validation score is another protocol's number, so the run reports none (the comparison's
    teacher lead on validation then reads "-") instead of a lead across protocols."""
    from recbole_derrd.quick_start import prepare
    from recbole_derrd.teacher import prepare_teacher, validation_settings_changed

    run_recbole("RRD", config_dict=dict(tiny, epochs=1), saved=False)
    cached = os.path.join(tiny["checkpoint_dir"], "teachers", teacher_files(tiny)[0])
    checkpoint = torch.load(cached, weights_only=False)
    full = dict(tiny, eval_args=dict(tiny["eval_args"], mode="full"))
    for settings, kept in ((tiny, True), (full, False)):
        config, _, train_data, valid_data, _ = prepare("RRD", None, None, dict(
            settings, epochs=1, teacher_checkpoint=cached, teacher_cache_dir=str(tmp_path / "unused")))
        model = get_model("RRD")(config, train_data._dataset)
        changed = validation_settings_changed(checkpoint, model.teacher_config)
        assert changed == ([] if kept else ["eval_args.mode.valid: checkpoint has 'uni50', this run has 'full'"])
        prepare_teacher(model, train_data, valid_data)
        if kept:
            assert model.teacher_valid_score == pytest.approx(checkpoint["best_valid_score"])
        else:
            assert model.teacher_valid_score is None and model.teacher_epoch == checkpoint["epoch"]
    # a stock RecBole checkpoint carries no plugin record: its eval_args were verified equal
    assert validation_settings_changed({"state_dict": {}}, model.teacher_config) == []


def test_stock_recbole_checkpoint_as_teacher(tiny):
    stock = run_recbole("BPR", config_dict=dict(tiny, embedding_size=16, epochs=2), saved=True)
    result = run_recbole("DE", config_dict=dict(tiny, epochs=1, teacher_checkpoint=stock["saved_model_file"]),
                         saved=False)
    assert result["test_result"]["hit@10"] >= 0
    with pytest.raises(CheckpointError, match="seed: checkpoint has 7, this run has 8"):
        run_recbole("DE", config_dict=dict(tiny, epochs=1, seed=8,
                                           teacher_checkpoint=stock["saved_model_file"]), saved=False)


def test_full_ranking_mode(tiny):
    full = dict(tiny, eval_args=dict(tiny["eval_args"], mode="full"))
    result = run_recbole("DERRD", config_dict=full, saved=True)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1


def test_full_ranking_masks_training_and_validation_items_in_the_test_ranking(tiny):
    """Protocol check: in full ranking, RecBole masks each user's training items and, for the
    test pass, the validation item too (it is not left among the test candidates)."""
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from recbole_derrd.config import protocol_file

    config = Config(model="DERRD", config_file_list=[protocol_file("loo_full")],
                    config_dict={k: v for k, v in tiny.items() if k != "eval_args"})
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    uid, iid = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
    valid_item = dict(zip(valid._dataset.inter_feat[uid].tolist(), valid._dataset.inter_feat[iid].tolist()))
    test_item = dict(zip(test._dataset.inter_feat[uid].tolist(), test._dataset.inter_feat[iid].tolist()))
    train_items = train._dataset.inter_matrix(form="csr")
    checked = 0
    for user in list(test_item)[:20]:
        masked = set(test.uid2history_item[user].tolist())
        assert valid_item[user] in masked or valid_item[user] == test_item[user]
        assert set(train_items[user].indices) <= masked
        assert test_item[user] not in masked
        checked += 1
    assert checked == 20


def test_load_data_and_model_plugin_and_stock(tiny, workdir):
    result = run_recbole("DERRD", config_dict=dict(tiny), saved=True)
    path = result["saved_model_file"]
    config, model, _, _, _, test_data = load_data_and_model(path)
    assert type(model).__name__ == "DERRD"
    saved = torch.load(path, weights_only=False)["state_dict"]
    torch.testing.assert_close(model.state_dict()["student.user_embedding.weight"],
                               saved["student.user_embedding.weight"])

    code = (
        "import recbole_derrd\n"
        "from recbole.quick_start import load_data_and_model\n"
        "config, model, *_ = load_data_and_model(%r)\n"
        "print(type(model).__name__)\n" % path
    )
    stock = run_subprocess(code, str(workdir), {"PYTHONPATH": ROOT})
    assert stock.returncode != 0 and "weights_only" in stock.stderr  # torch >= 2.6 default
    stock = run_subprocess(code, str(workdir), {"PYTHONPATH": ROOT, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert stock.returncode == 0, stock.stderr[-2000:]
    assert stock.stdout.strip().endswith("DERRD")


EXPORT_CHECK = r"""
import json, sys, torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.trainer import Trainer
from recbole.utils import get_model, init_seed
out = sys.argv[1]
config = Config(model="BPR", config_file_list=[out + "/BPR-student.yaml"])
init_seed(config["seed"], config["reproducibility"])
train, valid, test = data_preparation(config, create_dataset(config))
model = get_model("BPR")(config, train._dataset).to(config["device"])  # a GPU when there is one
model.load_state_dict(torch.load(out + "/BPR-student.weights.pt", weights_only=True))
checkpoint = torch.load(out + "/BPR-student.pth", weights_only=False)
assert checkpoint["config"]["model"] == "BPR"
model2 = get_model("BPR")(checkpoint["config"], train._dataset).to(config["device"])
model2.load_state_dict(checkpoint["state_dict"])
assert torch.equal(model.user_embedding.weight, model2.user_embedding.weight)
trainer = Trainer(config, model)
init_seed(config["seed"], config["reproducibility"])
result = trainer.evaluate(test, load_best_model=False)
assert "recbole_derrd" not in sys.modules
print(json.dumps(dict(result)))
"""


def test_exported_student_runs_on_stock_recbole(tiny, workdir):
    from recbole_derrd.serving.export import export_student

    result = run_recbole("DERRD", config_dict=dict(tiny), saved=True)
    out = str(workdir / "exported")
    paths = export_student(result["saved_model_file"], out)
    state = torch.load(paths["weights"], weights_only=True)
    assert set(state) == {"user_embedding.weight", "item_embedding.weight"}
    assert state["user_embedding.weight"].shape[1] == 8
    settings = yaml.safe_load(open(paths["config"]))
    assert settings["model"] == "BPR" and "de_weight" not in settings and "t_embedding_size" not in settings

    script = workdir / "check_export.py"
    script.write_text(EXPORT_CHECK)
    proc = subprocess.run([sys.executable, str(script), out], cwd=str(workdir), capture_output=True,
                          text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    stock_metrics = json.loads(proc.stdout.strip().splitlines()[-1])
    assert stock_metrics == pytest.approx(dict(result["test_result"]))

    # --vectors: the student's tables, id maps and training items as plain arrays
    from recbole_derrd.quick_start import load_data_and_model
    from recbole_derrd.serving.export import main as export_main
    from recbole_derrd.serving.inference import recommend
    from recbole_derrd.serving.requests import Recommender

    export_main([result["saved_model_file"], "--out", out, "--vectors"])
    recommender = Recommender.load(os.path.join(out, "BPR-student.vectors.npz"), k=10)
    _, model, _, train_data, _, _ = load_data_and_model(result["saved_model_file"])
    _, expected = recommend(model, torch.arange(1, 30), k=10, exclude=train_data._dataset.inter_matrix(form="csr"))
    assert [recommender.request(user)[1].tolist() for user in range(1, 30)] == expected.tolist()


def test_export_command_reports_a_bad_checkpoint_in_one_line(workdir, capsys):
    from recbole_derrd.serving.export import main as export_main

    (workdir / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(workdir / "broken.pth"), "--out", str(workdir / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recbole-derrd-export: error:") and "broken.pth" in err[0]
    assert not (workdir / "out").exists()


def test_side_by_side_shares_split_and_negatives(tiny, capsys):
    report = run_side_by_side("DERRD", config_dict=dict(tiny), saved=True, export_dir="exported")
    names = [row["model"] for row in report["rows"]]
    assert names[0].startswith("Teacher (BPR-16)") and names[1].startswith("Student alone (BPR-8)")
    assert names[2].startswith("DERRD (BPR-8)")
    sizes = {len(v["ndcg@10"]) for v in report["per_user"].values()}
    assert len(sizes) == 1  # the same users, in the same order, for every row
    assert {t["metric"] for t in report["paired_tests"]} == {"ndcg@10", "hit@10"}
    for t in report["paired_tests"]:
        assert 0.0 <= t["p_value"] <= 1.0
    out = capsys.readouterr().out
    assert "| Teacher (BPR-16)" in out and "Wilcoxon" in out
    assert os.path.isfile(report["exported"]["weights"])
    # The per-user values average to RecBole's own numbers.
    for name, row in zip(("teacher", "student", "DERRD"), report["rows"]):
        assert report["per_user"][name]["ndcg@10"].mean() == pytest.approx(row["test_result"]["ndcg@10"], abs=1e-4)


def test_run_script_mirrors_recbole_flags(tiny, workdir):
    config_file = workdir / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(dict(tiny, epochs=1)))
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "run_recbole_derrd.py"), "--model=RRD", "--dataset=tiny",
         "--config_files=%s" % config_file, "--rrd_k=4"],
        cwd=str(workdir), capture_output=True, text=True, timeout=600,
        env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| Teacher (BPR-16)" in proc.stdout and "| RRD (BPR-8)" in proc.stdout


def test_hyper_tuning_uses_plugin_models(tiny, workdir):
    pytest.importorskip("hyperopt", reason="HyperTuning needs the optional hyperopt package")
    from conftest import exhaustive_hyper_tuning

    tuner = exhaustive_hyper_tuning(workdir, dict(tiny, model="DERRD", epochs=1), "de_weight choice [0.01,0.1]\n")
    assert len(tuner.params2result) == 2
    assert tuner.best_params["de_weight"] in (0.01, 0.1)


def test_shipped_tuning_files_run_with_hyper_tuning(tiny, workdir, monkeypatch):
    pytest.importorskip("hyperopt", reason="HyperTuning needs the optional hyperopt package")
    # hyperopt's random search draws from an unseeded RandomState unless this is set: two
    # draws from the 144-point DERRD file then coincide about once in 36 runs (seen in CI)
    monkeypatch.setenv("HYPEROPT_FMIN_SEED", "1")
    from recbole.quick_start import objective_function
    from recbole.trainer import HyperTuning

    import recbole_derrd

    fixed = workdir / "fixed.yaml"
    fixed.write_text(yaml.safe_dump(dict(tiny, model="DERRD", epochs=1, rrd_top_n=50)))  # room for K = 40
    tuner = HyperTuning(objective_function, algo="random", early_stop=10, max_evals=2,
                        params_file=recbole_derrd.tuning_file("DERRD"), fixed_config_file_list=[str(fixed)])
    tuner.run()
    assert len(tuner.params2result) == 2
    assert set(tuner.best_params) == {"de_weight", "rrd_weight", "rrd_k", "rrd_temperature", "rrd_sampling",
                                      "de_anneal_epochs"}
    cd_fixed = workdir / "cd.yaml"
    cd_fixed.write_text(yaml.safe_dump(dict(tiny, model="CD", epochs=1)))
    cd_tuner = HyperTuning(objective_function, algo="random", early_stop=10, max_evals=1,
                           params_file=recbole_derrd.tuning_file("CD"), fixed_config_file_list=[str(cd_fixed)])
    cd_tuner.run()
    assert set(cd_tuner.best_params) == {"cd_gamma", "cd_temperature", "cd_samples", "cd_weight"}


def test_run_seeds_aggregates_and_pools_same_split(tiny, capsys):
    from recbole_derrd.harness.side_by_side import run_seeds

    report = run_seeds("DE", config_dict=dict(tiny, epochs=1), seeds=(1, 2), saved=False)
    student = report["summary"][1]
    assert student["model"].startswith("Student alone")
    values = student["per_seed"]["ndcg@10"]
    assert len(values) == 2 and student["mean"]["ndcg@10"] == pytest.approx(sum(values) / 2)
    assert {t["metric"] for t in report["pooled_tests"]} == {"ndcg@10", "hit@10"}  # TO split: same
    assert "Mean +- std over seeds [1, 2]" in capsys.readouterr().out


def test_resume_checkpoint_on_current_torch(tiny):
    from recbole.config import Config
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_model, get_trainer, init_seed

    first = run_recbole("DERRD", config_dict=dict(tiny, epochs=2), saved=True)
    config = Config(model="DERRD", config_dict=dict(tiny, epochs=4))
    init_seed(config["seed"], config["reproducibility"])
    train, valid, test = data_preparation(config, create_dataset(config))
    model = get_model("DERRD")(config, train._dataset)
    trainer = get_trainer(config["MODEL_TYPE"], "DERRD")(config, model)
    trainer.resume_checkpoint(first["saved_model_file"])
    saved_epoch = torch.load(first["saved_model_file"], weights_only=False)["epoch"]
    assert trainer.start_epoch == saved_epoch + 1
    trainer.fit(train, valid, saved=True)
    assert model.term("DE").tau == pytest.approx(1e-10 ** (3 / 1000))  # annealing continued to epoch 3
    result = trainer.evaluate(test, load_best_model=True)
    assert 0 <= result["ndcg@10"] <= 1


def test_stock_run_entry_point(tiny):
    from recbole.quick_start import run

    result = run("RRD", "tiny", config_dict=dict(tiny, epochs=1), saved=True)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1


def test_side_by_side_student_alone_matches_a_fresh_run(tiny):
    """The student alone trains on the loader the distilled student used just before; it must
    see the batches of a fresh run (same metrics as the student trained in a new pipeline)."""
    from recbole.config import Config

    from recbole_derrd.config import plugin_owned_keys, student_config
    from recbole_derrd.quick_start import load_data, train_and_test
    from recbole_derrd.registration import PLUGIN_MODELS

    settings = dict(tiny, epochs=3)
    report = run_side_by_side("DERRD", config_dict=settings, saved=False)
    plugin = Config(model="DERRD", config_dict=settings)
    sconfig = student_config(plugin, plugin_owned_keys(plugin, PLUGIN_MODELS.values()))
    fresh, _, _ = train_and_test(sconfig, *load_data(sconfig), saved=False)
    assert report["rows"][1]["test_result"] == fresh["test_result"]


def test_side_by_side_reports_the_teacher_gap_on_validation(tiny, capsys):
    """A teacher barely trained (tiny learning rate) has nothing to teach: the run says so."""
    from recbole_derrd.harness.side_by_side import teacher_clearly_better

    report = run_side_by_side("RRD", config_dict=dict(tiny, epochs=2, t_learning_rate=1e-7), saved=False)
    out = capsys.readouterr().out
    gap = report["teacher_valid_tests"][0]
    assert gap["metric"] == "ndcg@10" and "Teacher vs student alone on validation, ndcg@10" in out
    assert not teacher_clearly_better(gap)
    assert "Warning: the teacher is not significantly better than the student alone on validation" in out
    assert teacher_clearly_better({"mean_diff": 0.01, "p_value": 0.001})
    assert not teacher_clearly_better({"mean_diff": -0.01, "p_value": 0.001})


def test_a_binding_epoch_cap_is_reported(tiny, caplog):
    capped = run_recbole("BPR", config_dict=dict(tiny, epochs=2, stopping_step=10), saved=True)
    assert capped["cap_bound"]
    assert "ended at its epoch cap (epochs=2) while still improving on validation" in caplog.text
    stopped = run_recbole("BPR", config_dict=dict(tiny, epochs=50, stopping_step=0, learning_rate=0.05),
                          saved=True)
    assert not stopped["cap_bound"]


def test_comparison_marks_cells_ended_by_the_cap():
    from recbole_derrd.harness.comparison import _epochs_text

    assert _epochs_text({"best_epoch": 3, "last_epoch": 4, "cap_bound": True}) == "3/4 cap"
    assert _epochs_text({"best_epoch": 3, "last_epoch": 9}) == "3/9"
