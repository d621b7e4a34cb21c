"""The backbone support matrix: every RecBole general and sequential recommender as teacher and
as student, tried end to end on tiny synthetic data.  It regenerates ``docs/backbone-support.md``:

    python -m recbole_derrd.harness.support_matrix --out docs/backbone-support.md

Each cell is one short run through the real pipeline (:func:`recbole_derrd.quick_start.run_recbole`,
one epoch for the student and for its teacher), so the table says what ran, not what is believed.
The partner of every general model is BPR (BPR teaches each student; each teacher teaches a BPR
student), of every sequential model SASRec, on a tiny dataset with timestamps (leave-one-out by
time, full ranking: RecBole's sequential protocol).
A refusal's reason is the start-up check's own message (:mod:`recbole_derrd.backbone_support`).
With ``--combined`` each (model, role) runs once with every term it supports together (DE-RRD
where both sides have representations, else RRD): the test suite's quick form.
"""

import argparse
import os
import sys
import tempfile
import time
import traceback

#: the registered model that exercises each term (IR comes with its user-side RRD)
TERM_MODELS = {"DE": "DE", "RRD": "RRD", "RD": "RD", "CD": "CD", "IR": "IRRRD", "HTD": "HTD", "RCE": "RCEKD"}
PARTNER = "BPR"
SEQUENTIAL_PARTNER = "SASRec"
ROLES = ("teacher", "student")
#: stock sizes that assume a real dataset, scaled to the tiny one (key -> value)
TINY_OVERRIDES = {
    "ConvNCF": {"cnn_channels": [1, 8, 8], "cnn_kernels": [4, 2], "cnn_strides": [4, 2]},
    "NNCF": {"ui_embedding_size": 8, "neigh_embedding_size": 8, "num_conv_kernel": 8,
             "mlp_hidden_size": [16, 8]},
    "NCL": {"num_clusters": 8},
    "DGCF": {"n_factors": 2},
    "MacridVAE": {"kfac": 2},
    "LightSANs": {"k_interests": 3},
    "FEARec": {"n_layers": 2},
}


def tiny_settings(folder, n_users=60, n_items=150, interactions=1500):
    """Config dict of a one-epoch run on seeded synthetic data written under ``folder``."""
    from recbole_derrd.harness.synthetic import generate, write_atomic

    name = "matrix_tiny"
    if not os.path.isfile(os.path.join(folder, name, name + ".inter")):
        users, items = generate(n_users, n_items, interactions, min_per_user=8, seed=0)
        write_atomic(folder, name, users + 1, items + 1)
    return {
        "dataset": name, "data_path": folder, "load_col": {"inter": ["user_id", "item_id"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "RO", "group_by": "user", "mode": "uni50"},
        "metrics": ["NDCG"], "topk": [10], "valid_metric": "NDCG@10", "epochs": 1, "t_epochs": 1,
        "train_batch_size": 256, "eval_batch_size": 4096, "embedding_size": 8, "t_embedding_size": 16,
        "de_num_experts": 2, "rrd_top_n": 20, "rrd_k": 3, "rrd_l": 3, "ir_top_n": 5, "ir_k": 2, "ir_l": 2,
        "rd_k": 3, "cd_k": 3, "rce_k": 3, "rce_l": 3, "rce_top_m": 10, "show_progress": False, "state": "ERROR",
        "checkpoint_dir": os.path.join(folder, "saved"),
        "teacher_cache_dir": os.path.join(folder, "teachers"),
    }


def tiny_sequential_settings(folder, n_users=60, n_items=150, interactions=1500):
    """Config dict of a one-epoch sequential run (RecBole's protocol: prefixes of each user's
    time-ordered history, leave-one-out by time, full ranking) on seeded synthetic data."""
    from recbole_derrd.harness.synthetic import generate, write_atomic

    name = "matrix_tiny_seq"
    if not os.path.isfile(os.path.join(folder, name, name + ".inter")):
        users, items = generate(n_users, n_items, interactions, min_per_user=8, seed=0)
        write_atomic(folder, name, users + 1, items + 1, timestamps=True)
    settings = tiny_settings(folder, n_users, n_items, interactions)
    settings.update({
        "dataset": name, "load_col": {"inter": ["user_id", "item_id", "timestamp"]},
        "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "group_by": "user", "mode": "full"},
        "train_neg_sample_args": None, "MAX_ITEM_LIST_LENGTH": 10, "hidden_size": 8, "t_hidden_size": 16,
        "inner_size": 16, "t_inner_size": 32, "n_layers": 1, "t_n_layers": 1,
    })
    return settings


def _bpr_only(name):
    """A sequential model whose stock loss reads sampled negatives (FPMC, TransRec)."""
    from recbole.utils import get_model

    from recbole_derrd.backbone_support import is_sequential, needs_negatives
    from recbole_derrd.config import stock_model_yaml

    return is_sequential(name) and needs_negatives(get_model(name), stock_model_yaml(name))


def settings_for(name, settings, sequential_settings):
    from recbole_derrd.backbone_support import is_sequential

    return sequential_settings if is_sequential(name) else settings


def partner_of(name):
    from recbole_derrd.backbone_support import is_sequential

    return SEQUENTIAL_PARTNER if is_sequential(name) else PARTNER


def pair_settings(settings, teacher, student):
    """``settings`` with the pair's backbones and the tiny overrides of each (teacher's as t_).
    A sequential model trained with sampled negatives only (FPMC, TransRec: BPR) gets them, and
    its partner the BPR loss too (RecBole refuses a CE loss with sampled negatives)."""
    out = dict(settings, teacher_model=teacher, student_model=student)
    if _bpr_only(teacher) or _bpr_only(student):
        out.update(train_neg_sample_args={"distribution": "uniform", "sample_num": 1}, loss_type="BPR")
    out.update(TINY_OVERRIDES.get(student, {}))
    out.update({"t_" + key: value for key, value in TINY_OVERRIDES.get(teacher, {}).items()})
    return out


def combined_method(teacher, student):
    """Every term the pair supports in one registered model: DE-RRD, or RRD when either side
    only scores."""
    from recbole_derrd.backbones import adapter_class

    both = adapter_class(teacher).has_representations and adapter_class(student).has_representations
    return "DERRD" if both else "RRD"


def refusal(method, teacher, student):
    """The start-up checks' message when the pair cannot run ``method``, else None."""
    from recbole.utils import get_model

    from recbole_derrd.backbone_support import check_backbone, check_terms_fit

    try:
        check_backbone(student, "student_model")
        check_backbone(teacher, "teacher_model")
        check_terms_fit(method, get_model(method).terms, student, teacher)
    except ValueError as exc:
        return str(exc)
    return None


def run_pair(method, teacher, student, settings):
    """{"status": ok | refused | failed, "detail": ..., "seconds": ...} of one short run."""
    from recbole_derrd.quick_start import run_recbole

    reason = refusal(method, teacher, student)
    if reason:
        return {"status": "refused", "detail": reason, "seconds": 0.0}
    start = time.perf_counter()
    try:
        result = run_recbole(method, config_dict=pair_settings(settings, teacher, student), saved=False)
    except Exception as exc:  # a failure is a finding of the matrix, reported with its cause
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return {"status": "failed", "seconds": time.perf_counter() - start,
                "detail": "%s: %s (%s:%d)" % (type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "",
                                             os.path.basename(where.filename), where.lineno)}
    return {"status": "ok", "seconds": time.perf_counter() - start,
            "detail": "test NDCG@10 %.4f" % result["test_result"]["ndcg@10"]}


def cells_of(name, role, settings, methods):
    """{method: cell} for model ``name`` in ``role`` (its partner on the other side)."""
    partner = partner_of(name)
    teacher, student = (name, partner) if role == "teacher" else (partner, name)
    if methods is None:
        methods = [combined_method(teacher, student)]
    return {method: run_pair(method, teacher, student, settings) for method in methods}


def matrix(models, settings, sequential_settings, methods=None, log=print):
    """{(model, role): {method: cell}} over ``models``, both roles."""
    cells = {}
    for name in models:
        for role in ROLES:
            cells[(name, role)] = cells_of(name, role, settings_for(name, settings, sequential_settings),
                                           methods)
            log("%s as %s: %s" % (name, role, ", ".join(
                "%s %s" % (m, c["status"]) for m, c in cells[(name, role)].items())))
    return cells


def _mark(cell):
    return {"ok": "yes", "refused": "refused", "failed": "FAILED"}[cell["status"]]


def _reason(detail, name):
    """A refusal's message with the model's own name taken out, so one reason is listed once."""
    return detail.replace(repr(name), "<model>").replace(name, "<model>")


def table(cells, models, methods):
    """Markdown lines: one row per model, a column per (role, term); each distinct reason once
    below, numbered, the cells pointing to it."""
    from recbole_derrd.backbones import adapter_class

    head = ["model", "adapter"] + ["%s: %s" % (role, m) for role in ROLES for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    notes = {}
    for name in models:
        adapter = adapter_class(name)
        row = [name, adapter.__name__ + ("" if adapter.has_representations else " (scores only)")]
        for role in ROLES:
            for method in methods:
                cell = cells[(name, role)][method]
                mark = _mark(cell)
                if cell["status"] != "ok":
                    number = notes.setdefault(_reason(cell["detail"], name), len(notes) + 1)
                    mark += " [%d]" % number
                row.append(mark)
        lines.append("| " + " | ".join(row) + " |")
    if notes:
        lines += ["", "Reasons (`<model>`: the model of the row):", ""]
        lines += ["%d. %s" % (number, reason) for reason, number in notes.items()]
    return lines


def _shown_arguments(argv):
    """The command's arguments without ``--work_dir`` and its value (a machine's own path)."""
    shown, skip = [], False
    for argument in argv:
        if skip:
            skip = False
        elif argument == "--work_dir":
            skip = True
        elif not argument.startswith("--work_dir="):
            shown.append(argument)
    return shown


def main(argv=None):
    from recbole_derrd.backbone_support import general_models, is_sequential, sequential_models

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="markdown file to (re)write; printed when absent")
    parser.add_argument("--models", help="comma-separated subset (default: every general and sequential "
                                         "recommender)")
    parser.add_argument("--combined", action="store_true", help="one run per (model, role), terms combined")
    parser.add_argument("--work_dir", help="where data, logs and teachers go (default: a temporary folder)")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    out = os.path.abspath(args.out) if args.out else None  # before the chdir below

    import recbole_derrd  # noqa: F401  (registers the plugin)

    models = args.models.split(",") if args.models else general_models() + sequential_models()
    methods = None if args.combined else list(TERM_MODELS.values())
    work_dir = args.work_dir or tempfile.mkdtemp(prefix="support-matrix-")
    os.chdir(work_dir)  # RecBole writes ./log and ./saved here
    start = time.perf_counter()
    cells = matrix(models, tiny_settings(work_dir), tiny_sequential_settings(work_dir), methods,
                   log=lambda line: print(line, flush=True))
    shown = methods or ["combined"]
    if methods is None:
        cells = {key: {"combined": next(iter(value.values()))} for key, value in cells.items()}
    lines = ["# Backbone support (generated)", "",
             "Generated by `python -m recbole_derrd.harness.support_matrix%s` in %.0f s: every model "
             "below ran one epoch as a teacher and as a student on tiny synthetic data, through "
             "`run_recbole`, with BPR on the other side (general models) or SASRec (sequential "
             "models, RecBole's sequential protocol); \"yes\" means the run finished and tested. "
             "IR is exercised through `IRRRD` (with its user-side RRD). Do not edit by hand."
             % ("".join(" " + a for a in _shown_arguments(argv)), time.perf_counter() - start), ""]
    general = [m for m in models if not is_sequential(m)]
    sequential = [m for m in models if is_sequential(m)]
    for title, group in (("General recommenders", general), ("Sequential recommenders", sequential)):
        if group:
            lines += ["## %s" % title, ""] + table(cells, group, shown) + [""]
    text = "\n".join(lines) + "\n"
    if out:
        from recbole_derrd.atomic import atomic_write_text

        atomic_write_text(out, text)
    else:
        sys.stdout.write(text)
    failed = sum(c["status"] == "failed" for row in cells.values() for c in row.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
