"""Bad settings and data fail (or warn) before anything is trained, naming the key or file."""

import os
import sys

import pytest

import recbole_derrd.teacher as teacher_module
from recbole_derrd.quick_start import run_recbole
from recbole_derrd.settings_checks import suspicious_keys

from conftest import write_benchmark_split, write_tiny_dataset


@pytest.fixture
def no_teacher_training(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the check must come before the teacher is trained")

    monkeypatch.setattr(teacher_module, "train_teacher", refuse)


@pytest.mark.parametrize("key,value,message", [
    ("de_weight", float("nan"), r"de_weight=nan must be a finite number"),
    ("rrd_temperature", float("inf"), r"rrd_temperature=inf must be a finite number"),
    ("de_num_experts", 0.5, r"de_num_experts=0.5 must be a positive integer"),
    ("rrd_k", 2.7, r"rrd_k=2.7 must be a positive integer"),
    ("train_batch_size", 0, r"train_batch_size=0 must be a positive integer"),
    ("t_epochs", 0, r"t_epochs=0 must be a positive integer"),
    ("t_epochs", -1, r"t_epochs=-1 must be a positive integer"),
    ("epochs", 0, r"epochs=0 must be a positive integer"),
])
def test_bad_values_fail_before_training(tiny, no_teacher_training, key, value, message):
    with pytest.raises(ValueError, match=message):
        run_recbole("DERRD", config_dict=dict(tiny, **{key: value}), saved=False)


def test_yaml_nan_and_huge_numbers_are_refused(tiny, workdir, no_teacher_training):
    config_file = workdir / "bad.yaml"
    config_file.write_text("de_weight: .nan\nrrd_weight: 1e999\n")
    with pytest.raises(ValueError, match="must be a finite number"):
        run_recbole("DERRD", config_file_list=[str(config_file)], config_dict=dict(tiny), saved=False)


def test_typo_of_a_known_key_warns_with_a_suggestion(tiny):
    with pytest.warns(UserWarning, match=r"config key 'de_wieght' .* did you mean 'de_weight'\?"):
        run_recbole("DERRD", config_dict=dict(tiny, epochs=1, de_wieght=0.1), saved=False)
    assert suspicious_keys({"t_learning_rat": 1, "brand_new_key": 2}, {"learning_rate"}) == [
        ("t_learning_rat", "t_learning_rate")]


def test_the_run_scripts_own_flags_are_not_typos(tiny, monkeypatch):
    """RecBole's Config reads the whole command line, so run_recbole_derrd.py's --seeds reaches it:
    no "did you mean 'seed'?" for it."""
    import warnings

    from recbole.config import Config

    from recbole_derrd.settings_checks import warn_about_typos

    monkeypatch.setattr(sys, "argv", ["run_recbole_derrd.py", "--seeds=0,1", "--compare=RRD", "--out_dir=x"])
    config = Config(model="RRD", config_dict=dict(tiny))
    assert config["seeds"] == (0, 1)  # it did reach the config (RecBole evaluates the value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_about_typos(config)


def test_unwritable_checkpoint_dir_fails_first(tiny, workdir, no_teacher_training):
    blocker = workdir / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(PermissionError, match=r"checkpoint_dir='.*a_file/saved' is not a writable folder"):
        run_recbole("DERRD", config_dict=dict(tiny, checkpoint_dir=str(blocker / "saved")), saved=True)


def _dataset_with(workdir, name, edit):
    folder = write_tiny_dataset(str(workdir / name))
    path = os.path.join(folder, "tiny", "tiny.inter")
    lines = open(path).read().splitlines()
    with open(path, "w") as handle:
        handle.write("\n".join(edit(lines)) + "\n")
    return folder, path


def test_header_without_type_names_file_and_column(tiny, workdir, no_teacher_training):
    folder, path = _dataset_with(workdir, "untyped", lambda l: ["user_id:token\titem_id\ttimestamp:float"] + l[1:])
    with pytest.raises(ValueError, match=r"tiny.inter: header column 'item_id' needs a type") as error:
        run_recbole("DERRD", config_dict=dict(tiny, data_path=folder), saved=False)
    assert path in str(error.value)


def test_non_numeric_float_names_file_and_line(tiny, workdir, no_teacher_training):
    folder, path = _dataset_with(workdir, "nonnumeric", lambda l: l[:3] + ["u0\ti1\tyesterday"] + l[3:])
    with pytest.raises(ValueError, match=r"tiny.inter, line 4: column 'timestamp' \(float\) holds 'yesterday'"):
        run_recbole("DERRD", config_dict=dict(tiny, data_path=folder), saved=False)


def test_duplicate_rows_warn_with_count_and_switch(tiny, workdir):
    folder, _ = _dataset_with(workdir, "dups", lambda l: l + l[1:6])
    with pytest.warns(UserWarning, match=r"has 5 duplicate \(user, item\) rows.*rm_dup_inter: first"):
        run_recbole("DERRD", config_dict=dict(tiny, data_path=folder, epochs=1), saved=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        from recbole.config import Config

        Config(model="DERRD", config_dict=dict(tiny, data_path=folder, rm_dup_inter="first"))


def test_held_out_pairs_also_in_training_warn(tiny, workdir):
    def leak(parts):
        parts["train"] += parts["test"][:3]  # three test pairs leaked into training

    folder = write_benchmark_split(write_tiny_dataset(str(workdir / "bench")), leak)
    from recbole.config import Config

    with pytest.warns(UserWarning, match=r"tiny.test.inter: 3 of its 60 \(user, item\) pairs are also in .*tiny.train.inter"):
        Config(model="DERRD", config_dict=dict(tiny, data_path=folder, benchmark_filename=["train", "valid", "test"]))


def test_too_few_unobserved_items_names_the_user_token(tiny, no_teacher_training):
    with pytest.raises(ValueError, match=r"but user 'u\d+' \(internal id \d+\) has only"):
        run_recbole("DERRD", config_dict=dict(tiny, rrd_top_n=20, rrd_l=130), saved=False)
