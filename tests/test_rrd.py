"""RRD: the loss against a direct evaluation of its formula, the teacher top-N and the sampler."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import chisquare

from recbole_derrd.distillation import RRDSampler, relaxed_ranking_loss, teacher_top_n


def direct_rrd(interesting, uninteresting):
    total = 0.0
    for s, u in zip(interesting.tolist(), uninteresting.tolist()):
        for k in range(len(s)):
            below = sum(np.exp(x) for x in s[k:]) + sum(np.exp(x) for x in u)
            total -= s[k] - np.log(below)
    return total


def test_loss_matches_formula():
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    u = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    assert relaxed_ranking_loss(s, u).item() == pytest.approx(direct_rrd(s, u), rel=1e-12)


def test_loss_hand_computed_single_user():
    # s = (1, 0), u = (0): -[1 - log(e + 1 + 1)] - [0 - log(1 + 1)]
    expected = -(1 - np.log(np.e + 2)) + np.log(2)
    value = relaxed_ranking_loss(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0]]))
    assert value.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("scale", [1e4, -1e4])
def test_loss_finite_for_extreme_scores(scale):
    s = torch.tensor([[scale, -scale, 0.5 * scale]], requires_grad=True)
    u = torch.tensor([[scale, -scale]], requires_grad=True)
    loss = relaxed_ranking_loss(s, u)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(s.grad).all() and torch.isfinite(u.grad).all()


def test_fast_path_matches_logspace_path_in_value_and_gradient():
    from recbole_derrd.distillation.rrd import _relaxed_ranking_loss_logspace

    gen = torch.Generator().manual_seed(1)
    values = []
    for fn in (relaxed_ranking_loss, _relaxed_ranking_loss_logspace):
        s = (3 * torch.randn(50, 8, generator=gen.manual_seed(1))).requires_grad_()
        u = (3 * torch.randn(50, 5, generator=gen.manual_seed(2))).requires_grad_()
        loss = fn(s, u)
        loss.backward()
        values.append((loss.item(), s.grad, u.grad))
    assert values[0][0] == pytest.approx(values[1][0], rel=1e-5)
    assert torch.allclose(values[0][1], values[1][1], atol=1e-5)
    assert torch.allclose(values[0][2], values[1][2], atol=1e-5)


def test_spread_beyond_float64_range_takes_logspace_path():
    # the row maximum comes first and everything after it is ~2e4 below: exp underflows.
    s = torch.tensor([[1e4, -1e4, -1e4]], requires_grad=True)
    u = torch.tensor([[-1e4]], requires_grad=True)
    loss = relaxed_ranking_loss(s, u)
    loss.backward()
    # positions 2 and 3 see {-1e4, -1e4, -1e4}/{-1e4, -1e4}: -log(1/3) - log(1/2); position 1 ~ 0.
    assert loss.item() == pytest.approx(np.log(3) + np.log(2), abs=1e-3)  # float32 at 1e4: ulp 1e-3
    assert torch.isfinite(s.grad).all() and torch.isfinite(u.grad).all()


def test_hand_written_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(3)
    s = (2 * torch.randn(5, 6, generator=gen, dtype=torch.float64)).requires_grad_()
    u = (2 * torch.randn(5, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(relaxed_ranking_loss, (s, u))


def test_scores_gathered_from_tables_match_autograd_in_value_and_gradient():
    from recbole_derrd.backbones import gathered_dot

    gen = torch.Generator().manual_seed(4)
    users = torch.tensor([0, 3, 6, 3])  # a repeated user and repeated items must accumulate
    items = torch.tensor([[1, 2, 3], [4, 5, 1], [10, 9, 2], [1, 1, 7]])
    tables = [torch.randn(n, 4, generator=gen, dtype=torch.float64, requires_grad=True)
              for n in (7, 11)]
    assert torch.autograd.gradcheck(lambda a, b: gathered_dot(a, b, users, items), tables)
    weights = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    (gathered_dot(*tables, users, items) * weights).sum().backward()
    ours = [t.grad.clone() for t in tables]
    for t in tables:
        t.grad = None
    reference = (tables[1][items] * tables[0][users].unsqueeze(1)).sum(-1)
    (reference * weights).sum().backward()
    assert torch.allclose(gathered_dot(*tables, users, items), reference)
    for mine, theirs in zip(ours, (t.grad for t in tables)):
        assert torch.allclose(mine, theirs)


def test_loss_prefers_teacher_order():
    u = torch.tensor([[-1.0, -1.0]])
    assert relaxed_ranking_loss(torch.tensor([[3.0, 2.0, 1.0]]), u) < \
        relaxed_ranking_loss(torch.tensor([[1.0, 2.0, 3.0]]), u)


def random_train_matrix(n_users, n_items, per_user, seed=0):
    rng = np.random.default_rng(seed)
    rows, cols = [], []
    for user in range(1, n_users):  # user 0 is RecBole's padding user
        items = rng.choice(np.arange(1, n_items), size=per_user, replace=False)
        rows += [user] * per_user
        cols += list(items)
    return sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_users, n_items))


def test_teacher_top_n_excludes_training_items_and_matches_dense():
    n_users, n_items, n = 9, 40, 10
    train = random_train_matrix(n_users, n_items, 6)
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(n_users, n_items, generator=gen)
    top = teacher_top_n(lambda users: scores[users], train, n, chunk_elements=3 * n_items)
    dense = scores.clone()
    dense[torch.as_tensor(train.toarray() > 0)] = -torch.inf
    dense[:, 0] = -torch.inf
    expected = torch.topk(dense, n, dim=1).indices.numpy()
    np.testing.assert_array_equal(top, expected)
    for user in range(1, n_users):
        assert not set(top[user]) & set(train[user].indices)
        assert 0 not in top[user]


def test_teacher_top_n_rejects_too_long_lists():
    train = random_train_matrix(4, 12, 6)
    with pytest.raises(ValueError, match="rrd_top_n=6"):
        teacher_top_n(lambda users: torch.zeros(len(users), 12), train, 6)


def make_sampler(k=5, l=7, n=20, mode="sample", seed=3):
    n_users, n_items = 30, 200
    train = random_train_matrix(n_users, n_items, 15, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_users, n_items, generator=gen)
    top = teacher_top_n(lambda users: scores[users], train, n)
    return RRDSampler(top, train, k, l, temperature=10.0, mode=mode, seed=seed), top, train


def test_sampler_lists_are_valid():
    sampler, top, train = make_sampler()
    for epoch in range(3):
        interesting, uninteresting = sampler.sample(epoch)
        assert interesting.shape == (30, 5) and uninteresting.shape == (30, 7)
        for user in range(30):
            ranks = [list(top[user]).index(item) for item in interesting[user]]
            assert ranks == sorted(ranks) and len(set(ranks)) == 5  # distinct, teacher order
            train_items = set(train[user].indices)
            assert not set(interesting[user]) & train_items
            assert len(set(uninteresting[user])) == 7
            assert not set(uninteresting[user]) & (train_items | set(top[user]) | {0})


def test_complement_fallback_gives_valid_lists():
    """Rows that rejection sampling could not fill are drawn from the explicit complement."""
    sampler, top, train = make_sampler(l=40)
    sampler.MAX_REJECTION_ROUNDS = 0  # every row takes the fallback path
    _, uninteresting = sampler.sample(0)
    for user in range(30):
        allowed = set(range(1, 200)) - set(train[user].indices) - set(top[user])
        assert len(set(uninteresting[user])) == 40 and set(uninteresting[user]) <= allowed


def test_sampler_is_deterministic_per_epoch():
    sampler, _, _ = make_sampler()
    a = sampler.sample(4)
    b = sampler.sample(4)
    c = sampler.sample(5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_top_mode_takes_teacher_top_k():
    sampler, top, _ = make_sampler(mode="top")
    interesting, _ = sampler.sample(0)
    np.testing.assert_array_equal(interesting, top[:, :5])


def test_inclusion_frequencies_match_sampling_without_replacement():
    """Per-rank inclusion counts of the sampler vs numpy's choice(N, K, replace=False, p)."""
    n, k, draws, temperature = 30, 8, 4000, 10.0
    top = np.tile(np.arange(1, n + 1), (draws, 1))  # every "user" has the same top-N
    train = sp.csr_matrix((draws, n + 60), dtype=np.float32)
    sampler = RRDSampler(top, train, k, 1, temperature=temperature, seed=11)
    positions = sampler.interesting_positions(np.random.default_rng(5)).numpy()
    observed = np.bincount(positions.ravel(), minlength=n)

    p = np.exp(-np.arange(1, n + 1) / temperature)
    p /= p.sum()
    reference_rng = np.random.default_rng(6)
    reference = np.zeros(n)
    for _ in range(20000):
        reference[reference_rng.choice(n, size=k, replace=False, p=p)] += 1
    expected = reference / reference.sum() * observed.sum()
    assert observed.sum() == draws * k
    # Top ranks are included almost always: compare inclusion, not exp(-rank/T) itself.
    statistic, p_value = chisquare(observed, expected)
    assert p_value > 1e-3, (statistic, p_value)


def test_sampler_rejects_too_few_items():
    train = random_train_matrix(5, 30, 10)
    top = np.tile(np.arange(11, 29), (5, 1))[:, :15]
    with pytest.raises(ValueError, match="rrd_top_n \\+ rrd_l"):
        RRDSampler(top, train, 5, 10)


def test_sampler_validates_k():
    train = random_train_matrix(5, 100, 10)
    top = np.tile(np.arange(50, 60), (5, 1))
    with pytest.raises(ValueError, match="rrd_k=11"):
        RRDSampler(top, train, 11, 5)


def test_sampler_is_shared_not_copied_by_deepcopy():
    import copy

    sampler, _, _ = make_sampler()
    assert copy.deepcopy({"sampler": sampler})["sampler"] is sampler


def test_reference_loss_matches_the_fast_loss_in_value_and_gradient():
    from recbole_derrd.distillation import reference_relaxed_ranking_loss

    values = []
    for fn in (relaxed_ranking_loss, reference_relaxed_ranking_loss):
        gen = torch.Generator()
        s = (3 * torch.randn(50, 8, generator=gen.manual_seed(1), dtype=torch.float64)).requires_grad_()
        u = (3 * torch.randn(50, 5, generator=gen.manual_seed(2), dtype=torch.float64)).requires_grad_()
        loss = fn(s, u)
        loss.backward()
        values.append((loss.item(), s.grad, u.grad))
    assert values[0][0] == pytest.approx(values[1][0], rel=1e-12)
    torch.testing.assert_close(values[0][1], values[1][1], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(values[0][2], values[1][2], rtol=1e-10, atol=1e-12)
    # hand-computed, one user: s = (1, 0), u = (0): -[1 - log(e + 2)] - [0 - log(2)]
    s, u = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0]])
    assert reference_relaxed_ranking_loss(s, u).item() == pytest.approx(
        -(1 - np.log(np.e + 2)) - (0 - np.log(2)), rel=1e-6)
