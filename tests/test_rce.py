"""RCE-KD: the sampling weights, the loss against hand computations, the term's per-epoch tables
and its batch loss assembled by hand, and runs through RecBole."""

import math

import pytest
import torch
from recbole.config import Config

import recbole_derrd
from recbole_derrd.distillation.cross_entropy import (closure_sampling_weights, rank_sampling_weights, rce_loss,
                                                      rowwise_isin)
from recbole_derrd.distillation.ranking import teacher_top_n
from recbole_derrd.quick_start import run_recbole

from conftest import prepared_model

SMALL_RCE = {"rce_k": 5, "rce_l": 4, "rce_top_m": 20}


# --------------------------------------------------------------------------- by hand
def test_rowwise_isin_looks_within_each_row_only():
    values = torch.tensor([[3, 1, 7], [3, 1, 7]])
    members = torch.tensor([[7, 2], [1, 0]])
    assert rowwise_isin(values, members).tolist() == [[False, False, True], [False, True, False]]
    with pytest.raises(ValueError, match="2 rows of values, 1 of members"):
        rowwise_isin(values, members[:1])


def test_closure_weights_count_the_teachers_items_at_or_below_each_position():
    # the student's ranking 5, 3, 9, 1; the teacher's top items 1 and 3 sit at positions 1 and 3
    weights = closure_sampling_weights(torch.tensor([[5, 3, 9, 1]]), torch.tensor([[1, 3]]), temperature=10.0)
    counts = [2, 2, 1, 1]
    torch.testing.assert_close(weights, torch.tensor([[math.exp((c + 1) / 10.0) for c in counts]],
                                                     dtype=torch.float64))
    # the count is capped (the authors' 50); here at 1
    capped = closure_sampling_weights(torch.tensor([[5, 3, 9, 1]]), torch.tensor([[1, 3]]), 10.0, cap=1)
    torch.testing.assert_close(capped, torch.full((1, 4), math.exp(0.2), dtype=torch.float64))
    # a teacher item beyond the student's top M counts nowhere
    assert closure_sampling_weights(torch.tensor([[5, 9]]), torch.tensor([[1, 3]]), 1.0).tolist() == [[math.e] * 2]


def test_rank_weights_discount_by_position():
    weights = rank_sampling_weights(2, 3, temperature=2.0)
    assert weights.shape == (2, 3)
    torch.testing.assert_close(weights[1], torch.tensor([math.exp(-j / 2.0) for j in (1, 2, 3)],
                                                        dtype=torch.float64))


def softmax(values):
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    return [e / sum(exps) for e in exps]


def test_rce_loss_by_hand():
    # one user, K = 2, L = 2: columns (student's top 2 | 2 sampled | teacher's top 2)
    student = [[2.0, 1.0, 0.5, -1.0, 0.3, 1.5]]
    teacher = [[1.0, 3.0, 2.0, 0.0, -0.5, 2.5]]
    # teacher item 0 was sampled (already in the set); teacher item 1 is neither sampled nor the
    # student's top: it joins the sampled set in the second cross-entropy
    in_sampled = torch.tensor([[True, False]])
    in_top = torch.tensor([[False, False]])
    tau, beta = 2.0, 3.0
    s = [v / tau for v in student[0]]
    t = [v / tau for v in teacher[0]]
    closed = -sum(p * math.log(q) for p, q in zip(softmax(t[:2]), softmax(s[:2])))
    rest_s, rest_t = s[2:4] + s[5:], t[2:4] + t[5:]
    rest = -sum(p * math.log(q) for p, q in zip(softmax(rest_t), softmax(rest_s)))
    w = math.exp(-beta * 0.5)
    expected = (1 - w) * closed + w * rest
    scores = torch.tensor(student, requires_grad=True)
    loss = rce_loss(scores, torch.tensor(teacher), 2, 2, in_sampled, in_top, tau, beta)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert torch.isfinite(scores.grad).all()
    assert scores.grad[0, 4].item() == 0.0  # the masked teacher item gets no gradient
    # a teacher item in the student's top K also leaves the second set; no overlap: w = 1
    loss = rce_loss(torch.tensor(student), torch.tensor(teacher), 2, 2, torch.tensor([[False, False]]),
                    torch.tensor([[True, False]]), tau, beta)
    assert loss.item() == pytest.approx(rest, rel=1e-6)
    # two users sum
    both = rce_loss(torch.tensor(student * 2), torch.tensor(teacher * 2), 2, 2, in_sampled.repeat(2, 1),
                    in_top.repeat(2, 1), tau, beta)
    assert both.item() == pytest.approx(2 * expected, rel=1e-6)


# --------------------------------------------------------------------------- the term
def build(settings):
    return prepared_model("RCEKD", settings)


def test_the_terms_tables_follow_both_rankings(tiny):
    _, net, train = build(dict(tiny, **SMALL_RCE))
    term = net.term("RCE")
    train_matrix = train._dataset.inter_matrix(form="csr")
    teacher_top = teacher_top_n(net.teacher_adapter.all_scores, train_matrix, 5)
    with torch.no_grad():
        student_top = teacher_top_n(net.student_adapter.all_scores, train_matrix, 20)
    assert term.items.shape == (net.n_users, 5 + 4 + 5)
    assert term.items[:, :5].tolist() == student_top[:, :5].tolist()
    assert term.items[:, 9:].tolist() == teacher_top.tolist()
    for user in range(1, net.n_users):
        sampled = term.items[user, 5:9].tolist()
        assert len(set(sampled)) == 4 and set(sampled) <= set(student_top[user].tolist())
        assert not set(sampled) & set(train_matrix[user].indices.tolist())  # training items never listed
        assert term.in_sampled[user].tolist() == [i in sampled for i in teacher_top[user].tolist()]
        assert term.in_student_top[user].tolist() == [i in student_top[user, :5] for i in teacher_top[user]]
    # the same sets for the same (seed, epoch); others for the next epoch
    first = term.items.clone()
    net.start_epoch(0)
    assert torch.equal(term.items, first)
    net.start_epoch(1)
    assert not torch.equal(term.items[:, 5:9], first[:, 5:9])


def test_the_teachers_scores_of_the_epochs_lists_are_computed_once_per_epoch_in_blocks(tiny, monkeypatch):
    import recbole_derrd.terms.rce as rce

    monkeypatch.setattr(rce, "TEACHER_BLOCK_USERS", 3)  # several blocks, the last one short
    _, net, _ = build(dict(tiny, **SMALL_RCE))
    term = net.term("RCE")
    for epoch in (0, 1):
        net.start_epoch(epoch)
        users = torch.arange(net.n_users)
        with torch.no_grad():
            expected = net.teacher_adapter.score(users, term.items)
        torch.testing.assert_close(term.teacher_scores, expected)  # this epoch's lists, every user


def test_the_terms_batch_loss_is_rce_loss_on_its_users(tiny):
    _, net, train = build(dict(tiny, **SMALL_RCE, rce_tau=2.0, rce_beta=1.0))
    term = net.term("RCE")
    batch = net.batch(next(iter(train)))
    users = batch.users
    items = term.items[users]
    with torch.no_grad():
        expected = rce_loss(net.student_adapter.score(users, items), net.teacher_adapter.score(users, items), 5, 4,
                            term.in_sampled[users], term.in_student_top[users], 2.0, 1.0)
        torch.testing.assert_close(term.raw_loss(batch), expected)


def test_rce_trains_through_recbole_and_checks_its_keys(tiny):
    result = run_recbole("RCEKD", config_dict=dict(tiny, **SMALL_RCE), saved=True)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    assert recbole_derrd.RCEKD.terms[0].name == "RCE"
    rank = run_recbole("RCEKD", config_dict=dict(tiny, **SMALL_RCE, rce_sampling="rank", teacher_model="EASE"),
                       saved=False)
    assert 0 <= rank["test_result"]["ndcg@10"] <= 1
    with pytest.raises(ValueError, match="rce_l=30 must not exceed rce_top_m=20"):
        build(dict(tiny, **dict(SMALL_RCE, rce_l=30)))
    with pytest.raises(ValueError, match="rce_sampling='closure' must be one of"):
        build(dict(tiny, **SMALL_RCE, rce_sampling="closure"))
    with pytest.raises(ValueError, match="rce_top_m = 1000"):
        build(dict(tiny, **dict(SMALL_RCE, rce_top_m=1000)))


def test_rce_refuses_a_sequential_student(tiny_seq):
    with pytest.raises(ValueError, match="RCEKD: its RCE term ranks or distils per user, but student_model='SASRec'"):
        Config(model="RCEKD", config_dict=dict(tiny_seq, **SMALL_RCE))


def test_a_resumed_rce_run_matches_the_uninterrupted_one_and_exports(tiny, workdir):
    """The sampled sets depend on the student at each epoch's start and on (seed, epoch) only, so
    a run resumed from its epoch-2 checkpoint trains as the uninterrupted one; the student
    exports as a stock BPR without the rce_ keys."""
    import glob

    import yaml

    from recbole_derrd.serving.export import export_student

    settings = dict(tiny, **SMALL_RCE, epochs=4, stopping_step=100, eval_step=1,
                    teacher_cache_dir=str(workdir / "teachers"))
    straight = run_recbole("RCEKD", config_dict=dict(settings, checkpoint_dir=str(workdir / "a")), saved=True)
    short = dict(settings, epochs=2, checkpoint_dir=str(workdir / "b"))
    run_recbole("RCEKD", config_dict=short, saved=True)
    last = glob.glob(str(workdir / "b" / "RCEKD-*-last.pth"))[0]
    resumed = run_recbole("RCEKD", config_dict=dict(short, epochs=4, resume=last), saved=True)
    assert resumed["best_valid_result"] == straight["best_valid_result"]
    assert resumed["test_result"] == straight["test_result"]
    paths = export_student(straight["saved_model_file"], str(workdir / "exported"))
    exported = yaml.safe_load(open(paths["config"]))
    assert exported["model"] == "BPR" and not any(key.startswith("rce_") for key in exported)
