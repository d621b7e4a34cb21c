"""DE: expert shapes and sizes, the Gumbel-softmax, the tau schedule, the mixing and its loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from recbole_derrd.distillation import DistillationExperts, gumbel_softmax, tau_at_epoch
from recbole_derrd.distillation.experts import expert_hidden_size


def test_hidden_size_rule():
    assert expert_hidden_size(20, 200) == 110
    assert expert_hidden_size(64, 64) == 32


def test_shapes():
    experts = DistillationExperts(20, 200, num_experts=30)
    out = experts(torch.randn(7, 20), torch.randn(7, 200), tau=1.0)
    assert out.shape == (7, 200)
    assert experts.selection.in_features == 200 and experts.selection.out_features == 30


def test_tau_schedule():
    assert tau_at_epoch(0) == 1.0
    assert tau_at_epoch(500) == pytest.approx(1e-5)
    assert tau_at_epoch(1000) == pytest.approx(1e-10)
    assert tau_at_epoch(5000) == pytest.approx(1e-10)  # floored
    assert tau_at_epoch(100) == pytest.approx(10 ** -1.0)
    assert tau_at_epoch(3, start=2.0, end=0.5, anneal_epochs=6) == pytest.approx(1.0)


def test_gumbel_softmax_formula():
    alpha = torch.tensor([[0.7, 0.2, 0.1]])
    noise = torch.tensor([[0.3, -0.1, 1.2]])
    expected = F.softmax((torch.log(alpha + 1e-10) + noise) / 0.5, dim=-1)
    torch.testing.assert_close(gumbel_softmax(alpha, 0.5, noise), expected)
    weights = gumbel_softmax(alpha.repeat(1000, 1), 1e-4)
    assert torch.allclose(weights.sum(-1), torch.ones(1000))
    assert (weights.max(-1).values > 0.999).float().mean() > 0.99  # nearly one-hot at low tau


def explicit_experts(experts, x, weights):
    """The definition: sum_m w_m * Linear2_m(ReLU(Linear1_m(x)))."""
    m, h = experts.num_experts, experts.hidden
    total = 0
    for i in range(m):
        w1 = experts.w1[:, i * h:(i + 1) * h]
        b1 = experts.b1[i * h:(i + 1) * h]
        w2 = experts.w2[i * h:(i + 1) * h]
        out = F.relu(x @ w1 + b1) @ w2 + experts.b2[i]
        total = total + weights[:, i:i + 1] * out
    return total


def test_mixing_matches_per_expert_definition():
    torch.manual_seed(0)
    experts = DistillationExperts(6, 10, num_experts=5).double()
    x = torch.randn(9, 6, dtype=torch.float64)
    weights = torch.softmax(torch.randn(9, 5, dtype=torch.float64), -1)
    torch.testing.assert_close(experts.mix(x, weights), explicit_experts(experts, x, weights))


def test_loss_is_summed_squared_distance():
    torch.manual_seed(0)
    experts = DistillationExperts(4, 8, num_experts=3).double()
    x = torch.randn(5, 4, dtype=torch.float64)
    t = torch.randn(5, 8, dtype=torch.float64)
    torch.manual_seed(1)
    loss = experts.loss(x, t, tau=0.5)
    torch.manual_seed(1)
    out = experts(x, t, tau=0.5)
    assert loss.item() == pytest.approx(((t - out) ** 2).sum().item())


def test_loss_on_ids_looks_rows_up_and_leaves_the_teacher_out_of_the_graph():
    torch.manual_seed(0)
    experts = DistillationExperts(4, 8, num_experts=3).double()
    student, teacher = torch.nn.Embedding(6, 4).double(), torch.nn.Embedding(6, 8).double()
    ids = torch.tensor([5, 1, 1])
    torch.manual_seed(1)
    loss = experts.loss_on(student, teacher, ids, tau=0.5)
    torch.manual_seed(1)  # the same Gumbel noise
    assert loss.item() == pytest.approx(experts.loss(student(ids), teacher(ids), tau=0.5).item())
    loss.backward()
    assert teacher.weight.grad is None
    assert student.weight.grad[[1, 5]].abs().sum() > 0 and not student.weight.grad[[0, 2, 3, 4]].any()


def test_single_expert_has_no_selection():
    experts = DistillationExperts(4, 8, num_experts=1)
    assert experts.selection is None
    x, t = torch.randn(3, 4), torch.randn(3, 8)
    torch.testing.assert_close(experts(x, t, 1.0), explicit_experts(experts, x, torch.ones(3, 1)))


def test_gradients_reach_experts_selection_and_student_not_teacher():
    experts = DistillationExperts(4, 8, num_experts=3)
    student = torch.randn(5, 4, requires_grad=True)
    teacher = torch.randn(5, 8, requires_grad=True)
    experts.loss(student, teacher, tau=1.0).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0
    assert teacher.grad is None  # the target is detached
    for name, p in experts.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_initialisation_like_linear():
    experts = DistillationExperts(20, 200, num_experts=30)
    assert experts.w1.abs().max() <= 1 / math.sqrt(20)
    assert experts.w2.abs().max() <= 1 / math.sqrt(110)


def test_dense_backward_pass_gradcheck():
    """The hand-written backward pass against finite differences (float64)."""
    from recbole_derrd.distillation.experts import _DenseMixture
    from recbole_derrd.distillation.workspace import ScratchPool

    torch.manual_seed(0)
    experts = DistillationExperts(3, 5, num_experts=4).double()
    params = [p.detach().clone().requires_grad_() for p in (experts.w1, experts.b1, experts.w2, experts.b2)]
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    weights = torch.softmax(torch.randn(6, 4, dtype=torch.float64), -1).requires_grad_()
    pool = ScratchPool()
    assert torch.autograd.gradcheck(lambda *a: _DenseMixture.apply(*a, pool), (x, weights, *params))


def test_dense_block_rows_rule():
    from recbole_derrd.distillation.experts import dense_block_rows

    assert dense_block_rows(30 * 110, 200) == 400      # BPR 20 -> 200: 2 * d_t
    assert dense_block_rows(30 * 275, 500) == 1000     # NeuMF 50 -> 500: 2 * d_t
    assert dense_block_rows(30 * 40, 64) == (1 << 20) // 1200  # narrow teacher: the 4 MiB floor
    assert dense_block_rows(30 * 5000, 10000) == (1 << 24) // 150000  # capped at 64 MiB
    assert dense_block_rows(1 << 25, 10) == 1


def low_tau_case(threshold, seed=0):
    torch.manual_seed(seed)
    experts = DistillationExperts(20, 200, num_experts=30, weight_threshold=threshold).double()
    student = torch.randn(64, 20, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(64, 200, dtype=torch.float64)
    return experts, student, teacher


def test_dense_blocks_match_one_block_and_plain_autograd(monkeypatch):
    """Rows split over several cache-sized blocks give the same values and gradients."""
    from recbole_derrd.distillation import experts as module

    torch.manual_seed(1)
    experts = DistillationExperts(3, 5, num_experts=4).double()
    x = torch.randn(37, 3, dtype=torch.float64)
    weights = torch.softmax(torch.randn(37, 4, dtype=torch.float64), -1)
    target = torch.randn(37, 5, dtype=torch.float64)

    def run(mix):
        inputs = [x.clone().requires_grad_(), weights.clone().requires_grad_()]
        experts.zero_grad()
        loss = (mix(*inputs) - target).pow(2).sum()
        loss.backward()
        return [loss.detach()] + [t.grad for t in inputs] + [p.grad.clone() for p in experts.parameters()
                                                             if p.grad is not None]

    def plain(x, w):  # every expert separately, through autograd
        m, h = experts.num_experts, experts.hidden
        w1, b1 = experts.w1.view(3, m, h), experts.b1.view(m, h)
        w2 = experts.w2.view(m, h, 5)
        outs = [torch.relu(x @ w1[:, e] + b1[e]) @ w2[e] + experts.b2[e] for e in range(m)]
        return sum(w[:, e:e + 1] * outs[e] for e in range(m))

    reference = run(plain)
    monkeypatch.setattr(module, "DENSE_BLOCK_MAX_ELEMENTS", 8 * experts.num_experts * experts.hidden)
    blocked = run(lambda x, w: experts.mix(x, w, path="dense"))  # 8 rows per block: 5 blocks
    assert len(blocked) == len(reference)
    for a, b in zip(blocked, reference):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("tau", [1e-2, 1e-4])
def test_sparse_path_agrees_with_exact_dense_loss_and_gradients(tau):
    """Skipping weights < 1e-6 (sparse) vs every weight (dense, threshold 0), same noise."""
    results = []
    for threshold, path in ((0.0, "dense"), (1e-6, "sparse"), (1e-6, "dense")):
        experts, student, teacher = low_tau_case(threshold)
        torch.manual_seed(5)
        weights = experts.selection_weights(teacher, tau)
        loss = (teacher - experts.mix(student, weights, path=path)).pow(2).sum()
        loss.backward()
        grads = [student.grad] + [p.grad for p in experts.parameters()]
        results.append((loss.detach(), grads, int(torch.count_nonzero(weights))))
    (exact, exact_grads, n_exact), (sparse, sparse_grads, n_sparse), (dense, dense_grads, _) = results
    assert n_sparse < 64 * 30 * 0.25 < n_exact or n_exact <= 64 * 30 * 0.25  # few experts carry weight
    torch.testing.assert_close(sparse, exact, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(sparse, dense, rtol=1e-12, atol=1e-10)
    for a, b, c in zip(sparse_grads, exact_grads, dense_grads):
        # dropped weights (< 1e-6 each) shift a gradient by far less than 1e-4 of its scale
        assert (a - b).abs().max() <= 1e-4 * b.abs().max() + 1e-12
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10)


def test_auto_path_goes_sparse_only_when_selection_is_sharp():
    experts = DistillationExperts(20, 200, num_experts=30)
    teacher = torch.randn(256, 200)
    torch.manual_seed(0)
    sharp = experts.selection_weights(teacher, 1e-3)
    soft = experts.selection_weights(teacher, 1.0)
    assert torch.count_nonzero(sharp) <= 0.25 * sharp.numel() < torch.count_nonzero(soft)
    assert torch.all(sharp[sharp > 0] >= 1e-6)  # nothing under the threshold, so no denormals


LAYOUTS = ["balanced", "skewed", "one expert"]


def sparse_case(layout, n=40):
    """5 experts 6 -> 10, n rows with one expert each (chosen by ``layout``), one row with two."""
    torch.manual_seed(0)
    experts = DistillationExperts(6, 10, num_experts=5).double()
    if layout == "balanced":
        chosen = torch.arange(n) % 5
    elif layout == "skewed":
        chosen = torch.where(torch.arange(n) < n * 4 // 5, 2, torch.arange(n) % 5)
    else:
        chosen = torch.full((n,), 4)
    weights = torch.zeros(n, 5, dtype=torch.float64)
    weights[torch.arange(n), chosen] = torch.rand(n, dtype=torch.float64) + 0.5
    weights[0, (chosen[0] + 1) % 5] = 0.25  # a row with two experts
    return experts, torch.randn(n, 6, dtype=torch.float64), weights


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sparse_tiles_match_definition_for_any_expert_load(layout):
    """Balanced loads use the weights in place, skewed ones gather per tile: same values."""
    experts, x, weights = sparse_case(layout)
    torch.testing.assert_close(experts.mix(x, weights, path="sparse"), explicit_experts(experts, x, weights))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sparse_backward_pass_gradcheck(layout):
    """The sparse path's hand-written backward against finite differences (float64), with the
    kept pairs fixed (a weight that is exactly 0 stays out of the sum and gets no gradient)."""
    from recbole_derrd.distillation.experts import _SparseMixture, _Tiles

    experts, x, weights = sparse_case(layout, n=12)
    tiles = _Tiles.of(weights, experts.num_experts)
    assert (tiles.expert is None) == (layout == "balanced")
    params = [p.detach().clone().requires_grad_() for p in (experts.w1, experts.b1, experts.w2, experts.b2)]
    inputs = (x.requires_grad_(), weights.requires_grad_(), *params)
    assert torch.autograd.gradcheck(lambda *a: _SparseMixture.apply(*a, tiles), inputs)


@pytest.mark.parametrize("tau", [1.0, 1e-2])
def test_reference_path_matches_the_fast_paths_in_value_and_gradients(tau):
    """The straightforward computation (all M outputs per row, autograd) == dense / auto paths."""
    results = []
    for path in ("reference", "dense", "auto"):
        torch.manual_seed(0)
        experts = DistillationExperts(8, 24, num_experts=6, weight_threshold=0.0).double()
        student = torch.randn(40, 8, dtype=torch.float64, requires_grad=True)
        teacher = torch.randn(40, 24, dtype=torch.float64)
        torch.manual_seed(1)  # same Gumbel noise
        loss = experts.loss(student, teacher, tau, path=path)
        loss.backward()
        results.append((loss.detach(), [student.grad] + [p.grad for p in experts.parameters()]))
    (reference, ref_grads), *others = results
    for loss, grads in others:
        torch.testing.assert_close(loss, reference, rtol=1e-10, atol=1e-12)
        for a, b in zip(grads, ref_grads):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_reference_path_keeps_the_weights_under_the_threshold():
    experts = DistillationExperts(4, 6, num_experts=5, weight_threshold=0.5)
    teacher = torch.randn(30, 6)
    torch.manual_seed(2)
    kept = experts.selection_weights(teacher, 1.0, threshold=False)
    assert torch.count_nonzero(kept) == kept.numel()
    torch.manual_seed(2)
    assert torch.count_nonzero(experts.selection_weights(teacher, 1.0)) < kept.numel()
