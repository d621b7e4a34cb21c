"""The baselines RD and CD: losses against direct formulas, the CD sampler's law, end to end."""

import math

import numpy as np
import pytest
import torch
from recbole.quick_start import run_recbole as stock_run_recbole
from scipy.stats import chisquare

from test_model import build


def test_rd_static_loss_matches_formula(tiny):
    _, net, train, _, _ = build("RD", dict(tiny, rd_k=4, rd_lambda=2.0))
    batch = next(iter(train))
    users = torch.unique(batch["user_id"])
    loss = net.term("RD").raw_loss(net.batch(batch))  # epoch 0 < warm-up: static weights only
    weights = [math.exp(-r / 2.0) for r in range(1, 5)]
    weights = [w / sum(weights) for w in weights]
    expected = 0.0
    for user in users.tolist():
        for r, item in enumerate(net.term("RD").top[user].tolist()):
            score = float(net.student.user_embedding.weight[user] @ net.student.item_embedding.weight[item])
            expected -= weights[r] * math.log(1 / (1 + math.exp(-score)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_rd_top_k_is_the_teachers_unobserved_best(tiny):
    _, net, train, _, _ = build("RD", tiny)
    train_items = train._dataset.inter_matrix(form="csr")
    scores = net.teacher.user_embedding.weight @ net.teacher.item_embedding.weight.t()
    for user in (1, 5, 9):
        masked = scores[user].clone()
        masked[train_items[user].indices] = -torch.inf
        masked[0] = -torch.inf
        assert net.term("RD").top[user].tolist() == torch.topk(masked, net.term("RD").k).indices.tolist()


def test_rd_hybrid_weights_match_formula(tiny):
    _, net, train, _, _ = build("RD", dict(tiny, rd_k=3, rd_samples=7, rd_mu=0.5, rd_warmup_epochs=1))
    net.start_epoch(1)  # past the warm-up
    users = torch.tensor([1, 2, 3])
    scores = net.student_adapter.score(users, net.term("RD").top[users])
    torch.manual_seed(11)
    weights = net.term("RD").weights(users, scores)
    torch.manual_seed(11)
    sampled = torch.randint(1, net.n_items, (3, 7))
    sampled_scores = net.student_adapter.score(users, sampled)
    static = [math.exp(-r) for r in (1, 2, 3)]
    for u in range(3):
        row = []
        for r in range(3):
            above = int((sampled_scores[u] > scores[u, r]).sum())
            rank_hat = 1 + above * (net.n_items - 1) / 7
            row.append(static[r] * math.tanh(max(0.5 * (rank_hat - (r + 1)), 0)))
        total = sum(row)
        expected = [w / total if total > 0 else 0.0 for w in row]
        assert weights[u].tolist() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_cd_ranks_follow_the_truncated_geometric_law(tiny):
    _, net, _, _, _ = build("CD", dict(tiny, cd_gamma=30.0, cd_samples=4000))
    ranks = net.term("CD").sample_ranks(0)[3].numpy()  # one user, 4000 draws
    unobserved = float(net.term("CD").unobserved[3])
    depth = net.term("CD").depth
    p = np.exp(-30.0 * np.arange(depth) / unobserved)
    p /= p.sum()
    observed = np.bincount(ranks, minlength=depth)
    top = 15  # pool the tail so every expected count is large enough
    expected = np.append(p[:top], p[top:].sum()) * len(ranks)
    statistic, p_value = chisquare(np.append(observed[:top], observed[top:].sum()), expected)
    assert p_value > 1e-3, (statistic, p_value)
    assert torch.equal(net.term("CD").sample_ranks(0), net.term("CD").sample_ranks(0))
    assert not torch.equal(net.term("CD").sample_ranks(0), net.term("CD").sample_ranks(1))


def test_cd_depth_keeps_all_but_tail_mass(tiny):
    _, net, train, _, _ = build("CD", dict(tiny, cd_gamma=500.0))
    needed = math.ceil(-math.log(1e-6) * float(net.term("CD").unobserved.max()) / 500.0)
    assert net.term("CD").depth == needed and net.term("CD").ranking.shape[1] == needed
    train_items = train._dataset.inter_matrix(form="csr")
    for user in (1, 4):
        assert not set(net.term("CD").items[user].tolist()) & set(train_items[user].indices)
        assert set(net.term("CD").items[user].tolist()) <= set(net.term("CD").ranking[user].tolist())


def test_cd_loss_matches_formula(tiny):
    _, net, train, _, _ = build("CD", dict(tiny, cd_temperature=2.0, cd_samples=3))
    batch = next(iter(train))
    loss = net.term("CD").raw_loss(net.batch(batch))
    expected = 0.0
    for user in torch.unique(batch["user_id"]).tolist():
        for item in net.term("CD").items[user].tolist():
            s = float(net.student.user_embedding.weight[user] @ net.student.item_embedding.weight[item])
            t = float(net.teacher.user_embedding.weight[user] @ net.teacher.item_embedding.weight[item])
            q = 1 / (1 + math.exp(-t / 2.0))
            expected -= q * math.log(1 / (1 + math.exp(-s))) + (1 - q) * math.log(1 / (1 + math.exp(s)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("model", ["RD", "CD"])
def test_baselines_run_through_stock_run_recbole(tiny, model):
    result = stock_run_recbole(model=model, config_dict=dict(tiny, rd_warmup_epochs=1), saved=True)
    assert all(0.0 <= v <= 1.0 for v in result["test_result"].values())
    assert result["best_valid_result"]["ndcg@10"] > 0


@pytest.fixture
def cd_grid():
    """results/citeulike/method_grid.py, a script (not part of the package), loaded as a module."""
    import importlib.util
    import os

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location(
        "method_grid", os.path.join(ROOT, "results", "citeulike", "method_grid.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cd_grid_script_reads_the_shipped_grid_and_ranks_by_validation(cd_grid, tmp_path):
    """results/citeulike/method_grid.py: the 72 points of CD.hyper, keys the CD model reads, and a
    summary ordered by the validation score (the test split is never part of a record)."""
    import json

    axes = dict(cd_grid.grid())
    assert set(axes) == {"cd_gamma", "cd_temperature", "cd_samples", "cd_weight"}
    assert [len(v) for v in axes.values()] == [3, 2, 2, 6]
    for score, params in ((0.31, {"cd_gamma": 10.0}), (0.35, {"cd_gamma": 100.0})):
        record = {"params": params, "best_valid_score": score, "best_epoch": 5, "last_epoch": 25,
                  "best_valid_result": {"ndcg@10": score, "hit@10": 2 * score}}
        (tmp_path / (cd_grid.point_name(params) + ".json")).write_text(json.dumps(record))
    records = cd_grid.summary(str(tmp_path))
    assert [r["params"]["cd_gamma"] for r in records] == [100.0, 10.0]
    assert "2 points finished (of 72)" in (tmp_path / "cd-grid.md").read_text()


def test_cd_grid_axis_search_walks_one_axis_at_a_time_from_the_fixed_start(cd_grid):
    """The cheaper strategy: start point first, then each axis in order with the others held at
    the best so far; no point twice; a tie keeps the earlier point."""
    axes = cd_grid.grid()
    assert cd_grid.STARTS["CD"] == {"cd_gamma": 100.0, "cd_temperature": 1.0, "cd_samples": 10, "cd_weight": 0.01}
    # score: weight 0.1 best; gamma 10 best only once weight is 0.1; samples and t tie
    def score(p):
        return (p["cd_weight"] == 0.1) + 0.5 * (p["cd_gamma"] == 10.0 and p["cd_weight"] == 0.1)

    best, seen = cd_grid.axis_search(axes, score, cd_grid.STARTS["CD"], cd_grid.AXIS_ORDERS["CD"])
    assert best == {"cd_gamma": 10.0, "cd_temperature": 1.0, "cd_samples": 10, "cd_weight": 0.1}
    assert seen[0] == cd_grid.STARTS["CD"]
    assert [(p["cd_weight"], p["cd_gamma"], p["cd_samples"], p["cd_temperature"]) for p in seen] == [
        (0.01, 100.0, 10, 1.0), (0.001, 100.0, 10, 1.0), (0.1, 100.0, 10, 1.0), (1.0, 100.0, 10, 1.0),
        (10.0, 100.0, 10, 1.0), (100.0, 100.0, 10, 1.0),  # weight
        (0.1, 10.0, 10, 1.0), (0.1, 1000.0, 10, 1.0),  # gamma, weight held at 0.1
        (0.1, 10.0, 50, 1.0), (0.1, 10.0, 10, 5.0)]  # samples, then t: ties keep 10 and 1.0
    assert len(seen) == 10 and len({cd_grid.point_name(p) for p in seen}) == 10
    # --jobs: each axis's new points (the first axis's with the start) are handed over together
    # before any is evaluated, the same points in the same order, so a side-by-side search visits
    # exactly what a serial one does
    batches = []
    best_again, seen_again = cd_grid.axis_search(axes, score, cd_grid.STARTS["CD"], cd_grid.AXIS_ORDERS["CD"],
                                                 prefetch=batches.append)
    assert (best_again, seen_again) == (best, seen)
    assert [len(b) for b in batches] == [6, 2, 1, 1] and sum(batches, []) == seen
    with pytest.raises(ValueError, match="not on the grid"):
        cd_grid.axis_search(axes, score, dict(cd_grid.STARTS["CD"], cd_weight=0.5), cd_grid.AXIS_ORDERS["CD"])


def test_axis_search_fills_spare_slots_with_the_next_axis_as_if_the_best_holds(cd_grid):
    """--jobs 2 on DE-RRD's grid: an axis with one new point shares its pair of slots with the next
    axis's point (trained as if the best so far stays best); the path, the best and the scores
    compared are those of the serial search, and the points trained stay within 13."""
    axes = cd_grid.grid("DERRD")
    start, order = cd_grid.STARTS["DERRD"], cd_grid.AXIS_ORDERS["DERRD"]
    short = {"rrd_weight": "w", "de_weight": "d", "rrd_temperature": "t", "rrd_sampling": "s",
             "rrd_k": "k", "de_anneal_epochs": "a"}

    def moved(p):  # the one setting that differs from the start, as e.g. "t1.0"
        diff = ["%s%s" % (short[k], v) for k, v in p.items() if v != start[k]]
        return "+".join(diff) or "start"

    for winner, expected in (
            # nothing beats the start: it trains beside the first axis, whose odd round takes a
            # de_weight point; an axis already trained (temperature, k) speculates nothing
            (None, [["start", "w0.0001", "w0.01", "d0.001"], ["d0.1", "t1.0"], [], ["stop", "k20"], [],
                    ["a200"]]),
            # temperature 1 wins: nothing was speculated at t 10, so no point is off the path
            ("t1.0", [["start", "w0.0001", "w0.01", "d0.001"], ["d0.1", "t1.0"], [],
                      ["t1.0+stop", "k20+t1.0"], [], ["t1.0+a200"]])):
        def score(p):
            return 1.0 if winner and moved(p).startswith(winner) and p["rrd_sampling"] == "sample" \
                and p["rrd_k"] == 40 and p["de_anneal_epochs"] == 1000 else 0.0

        serial = cd_grid.axis_search(axes, score, start, order)
        batches = []
        assert cd_grid.axis_search(axes, score, start, order, prefetch=batches.append, width=2) == serial
        assert [[moved(p) for p in b] for b in batches] == expected
        trained = sum(batches, [])
        assert all(p in trained for p in serial[1]) and len(trained) <= 13
    # a resumed search: a finished point takes no slot (the start done, the first axis's pair is
    # its two new points; unfinished, the start would leave one slot to speculate with)
    batches = []
    cd_grid.axis_search(axes, lambda p: 0.0, start, order, prefetch=batches.append, width=2,
                        finished=lambda p: p == start)
    assert [moved(p) for p in batches[0]] == ["start", "w0.0001", "w0.01"]
    # the budget binds: with room for only the path, nothing is speculated
    batches = []
    cd_grid.axis_search(axes, lambda p: 0.0, start, order, prefetch=batches.append, width=2, budget=9)
    assert [len(b) for b in batches] == [3, 2, 1, 1, 1, 1]
    # one slot (no prefetch): the serial search, the start first
    evaluated = []
    cd_grid.axis_search(axes, lambda p: evaluated.append(p) or 0.0, start, order)
    assert evaluated[0] == start and len(evaluated) == 9


class FakeChild:
    """A child process that finishes (writing its record) after ``polls`` polls."""

    def __init__(self, point, done, polls, returncode=0):
        self.point, self.done, self.polls, self.code = point, done, polls, returncode
        self.returncode = None

    def poll(self):
        self.polls -= 1
        if self.polls <= 0 and self.returncode is None:
            self.returncode = self.code
            if self.code == 0:
                self.done.append(self.point)
        return self.returncode


def test_the_point_pool_is_not_held_by_a_speculative_point(cd_grid):
    """A slow speculative point keeps training while the search's next points use the free slot."""
    done, started = [], []
    polls = {"a": 2, "slow": 50, "b": 2, "c": 2}

    def start(point):
        started.append(point)
        return FakeChild(point, done, polls[point]), point

    pool = cd_grid.PointPool(start, lambda p: p in done, jobs=2, sleep=lambda s: None)
    pool.add(["a", "slow"])
    pool.wait_for("a")
    assert done == ["a"] and started == ["a", "slow"]
    pool.add(["b", "c"])
    pool.wait_for("c")  # the point waited for goes first: c before b
    assert started == ["a", "slow", "c", "b"] and "slow" not in done
    pool.wait_for(None)
    assert sorted(done) == ["a", "b", "c", "slow"]
    pool.wait_for("a")  # finished: nothing more starts
    assert len(started) == 4


def test_the_point_pool_exits_with_the_failed_point_after_the_running_ones(cd_grid):
    done, started = [], []

    def start(point):
        started.append(point)
        return FakeChild(point, done, {"bad": 1, "ok": 1, "later": 3}[point], 1 if point == "bad" else 0), point

    pool = cd_grid.PointPool(start, lambda p: p in done, jobs=2, sleep=lambda s: None)
    pool.add(["bad", "ok", "later"])
    with pytest.raises(SystemExit, match="point\\(s\\) bad failed"):
        pool.wait_for("later")
    # "later" (waited for, so first) ran to its end after "bad" failed; "ok" was never started
    assert started == ["later", "bad"] and done == ["later"]


def test_the_point_pool_refuses_to_wait_for_a_point_that_ended_without_its_record(cd_grid):
    class Silent(FakeChild):  # exits 0 but writes nothing
        def poll(self):
            self.returncode = 0
            return 0

    pool = cd_grid.PointPool(lambda p: (Silent(p, [], 1), p), lambda p: False, jobs=1, sleep=lambda s: None)
    with pytest.raises(SystemExit, match="ended without its record"):
        pool.wait_for("lost")


def test_method_grid_refuses_a_jobs_count_below_one(tmp_path):
    """--jobs 0 would never start a point: one clear line and a non-zero exit instead."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    done = subprocess.run([sys.executable, os.path.join(ROOT, "results", "citeulike", "method_grid.py"),
                           "--out", str(tmp_path), "--jobs", "0"], capture_output=True, text=True)
    assert done.returncode == 2 and "--jobs must be at least 1 (got 0)" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("model, points", [("DERRD", 9), ("IRRRD", 7), ("HTD", 7), ("RCEKD", 8),
                                           ("RD", 8), ("DE", 5), ("RRD", 6), ("DEIRRRD", 9)])
def test_method_grids_have_their_axes_and_a_start_on_them(cd_grid, model, points):
    """Each later method's search: its shipped .hyper's axes (keys the model reads), a start
    point on the grid (the authors' settings), one axis pass within issue 18's 13 points."""
    from recbole_derrd.config import plugin_defaults
    from recbole_derrd.registration import PLUGIN_MODELS

    axes = dict(cd_grid.grid(model))
    assert set(axes) == set(cd_grid.AXIS_ORDERS[model]) == set(cd_grid.STARTS[model])
    assert set(axes) <= set(plugin_defaults(PLUGIN_MODELS[model]))
    assert all(cd_grid.STARTS[model][k] in v for k, v in axes.items())
    _, seen = cd_grid.axis_search(list(axes.items()), lambda p: 0.0, cd_grid.STARTS[model],
                                  cd_grid.AXIS_ORDERS[model])
    assert len(seen) == 1 + sum(len(v) - 1 for v in axes.values()) == points <= 13


def test_grid_point_names_keep_cd_records_names(cd_grid):
    assert cd_grid.point_name({"de_weight": 0.1, "cd_gamma": 10}) == "de_weight=0.1_gamma=10"


@pytest.mark.parametrize("recipe, model", [("citeulike-derrd-tuned.yaml", "DERRD"), ("citeulike-htd-tuned.yaml", "HTD"),
                                           ("citeulike-rce-tuned.yaml", "RCEKD"),
                                           ("citeulike-rd-tuned.yaml", "RD"),
                                           ("citeulike-de-tuned.yaml", "DE"),
                                           ("citeulike-deirrrd-tuned.yaml", "DEIRRRD")])
def test_each_citeulike_recipe_is_a_point_of_its_models_grid(cd_grid, recipe, model):
    """A recipe chosen by method_grid.py holds only its model's grid keys, each at a grid value
    (a typo in a key would otherwise be ignored by RecBole and the recipe silently not applied)."""
    import os

    import yaml

    from conftest import ROOT

    with open(os.path.join(ROOT, "results", "citeulike", recipe), encoding="utf-8") as handle:
        settings = yaml.safe_load(handle)
    axes = dict(cd_grid.grid(model))
    assert settings and set(settings) <= set(axes)
    assert all(value in axes[key] for key, value in settings.items())
    assert any(settings[key] != cd_grid.STARTS[model][key] for key in settings)  # not the search's start
