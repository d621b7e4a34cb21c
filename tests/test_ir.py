"""IR, the item-side ranking regularizer of IR-RRD: the teacher's top users per item, the
per-item lists, the item-side scores and the loss, against hand computations and end to end."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import recbole_derrd
from recbole_derrd.distillation import relaxed_ranking_loss, teacher_top_users
from recbole_derrd.quick_start import run_recbole

from conftest import prepared_model

SMALL_IR = {"ir_top_n": 5, "ir_k": 3, "ir_l": 3}  # the tiny data's most popular item has 49 of 59 users


@pytest.mark.parametrize("chunk_elements", [7, 40, 1 << 20])
def test_teacher_top_users_matches_the_dense_ranking(chunk_elements):
    rng = np.random.default_rng(0)
    n_users, n_items, depth = 23, 11, 6
    scores = torch.from_numpy(rng.standard_normal((n_users, n_items)).astype(np.float32))
    train = sp.random(n_users, n_items, density=0.2, format="csr", random_state=1)
    train.data[:] = 1
    train[:, 0] = 0  # the padding item and user have no interactions
    train[0, :] = 0
    train.eliminate_zeros()
    top = teacher_top_users(lambda users: scores[users], train, depth, chunk_elements=chunk_elements)
    dense = scores.clone().t()
    dense[torch.from_numpy(train.T.toarray()) > 0] = -torch.inf
    dense[:, 0] = -torch.inf  # the padding user
    expected = torch.topk(dense, depth, dim=1).indices.numpy()
    assert np.array_equal(top[1:], expected[1:])


def test_teacher_top_users_names_an_item_without_room():
    train = sp.csr_matrix(np.array([[0, 0, 0], [0, 1, 0], [0, 1, 1], [0, 1, 0]], dtype=np.float32))
    with pytest.raises(ValueError, match="ir_top_n=2 needs 2 unobserved users per item, but item 1 has only 0"):
        teacher_top_users(lambda users: torch.zeros(len(users), 3), train, 2)


build = prepared_model


def test_ir_lists_follow_the_teacher_and_avoid_training_users(tiny):
    _, net, train = build("IRRRD", dict(tiny, **SMALL_IR))
    ir = net.term("IR")
    matrix = train._dataset.inter_matrix(form="csr")
    teacher_scores = net.teacher_adapter.all_scores(torch.arange(net.n_users)).t()  # [items, users]
    lists = ir.lists.numpy()
    for item in range(1, net.n_items):
        interesting, uninteresting = lists[item, :3], lists[item, 3:]
        trained = set(matrix[:, item].nonzero()[0].tolist())
        top = ir.sampler.top_n[item].tolist()
        assert set(interesting) <= set(top) and not set(interesting) & trained
        # in the teacher's order
        assert all(teacher_scores[item, a] >= teacher_scores[item, b] for a, b in zip(interesting, interesting[1:]))
        assert not set(uninteresting) & (set(top) | trained | {0}) and len(set(uninteresting)) == 3


def test_ir_loss_by_hand_on_the_items_rrd_ranked(tiny):
    _, net, train = build("IRRRD", dict(tiny, **SMALL_IR))
    batch = net.batch(next(iter(train)))
    net.term("RRD").raw_loss(batch)  # sets the items IR regularises
    loss = net.term("IR").raw_loss(batch)
    items = torch.unique(net.term("RRD").lists.index_select(0, batch.users))
    users = net.term("IR").lists[items]
    u, v = net.student.user_embedding.weight, net.student.item_embedding.weight
    scores = (u[users] * v[items].unsqueeze(1)).sum(-1)  # the student's score of (user, item)
    expected = relaxed_ranking_loss(scores[:, :3], scores[:, 3:])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # alone (no RRD lists on the batch), the batch's own positive and negative items
    batch = net.batch(next(iter(train)))
    own = torch.unique(torch.cat([batch.positives, batch.negatives]))
    users = net.term("IR").lists[own]
    scores = (u[users] * v[own].unsqueeze(1)).sum(-1)
    assert net.term("IR").raw_loss(batch).item() == pytest.approx(
        relaxed_ranking_loss(scores[:, :3], scores[:, 3:]).item(), rel=1e-5)


@pytest.mark.parametrize("student", ["BPR", "LightGCN", "NeuMF"])
def test_item_side_scores_are_the_pairs_scores(tiny, student):
    sizes = {"mf_embedding_size": 8, "mlp_embedding_size": 8, "mlp_hidden_size": [16, 8],
             "t_mf_embedding_size": 16, "t_mlp_embedding_size": 16}
    _, net, _ = build("IRRRD", dict(tiny, student_model=student, teacher_model=student, t_epochs=1,
                                    **SMALL_IR, **sizes))
    net.eval()
    items = torch.tensor([3, 7, 9])
    users = torch.tensor([[1, 2, 5], [4, 4, 8], [10, 11, 12]])
    side = net.student_adapter.item_side_score(items, users)
    for row, item in enumerate(items.tolist()):
        expected = net.student_adapter.score(users[row], torch.full((3, 1), item)).view(-1)
        torch.testing.assert_close(side[row], expected, rtol=1e-5, atol=1e-6)


def test_irrrd_trains_through_recbole_and_logs_its_parts(tiny):
    result = run_recbole("IRRRD", config_dict=dict(tiny, **SMALL_IR), saved=True)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    assert recbole_derrd.IRRRD.terms[1].name == "IR"
    # with DE as well (DE + IR-RRD): three parts, RRD before IR (IR regularises RRD's items)
    _, net, train = build("DEIRRRD", dict(tiny, **SMALL_IR))
    assert [term.name for term in net.distillation_terms] == ["DE", "RRD", "IR"]
    losses = net.calculate_loss(next(iter(train)))
    assert len(losses) == 4 and all(bool(torch.isfinite(part)) for part in losses)
    result = run_recbole("DEIRRRD", config_dict=dict(tiny, **SMALL_IR), saved=False)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    with pytest.raises(ValueError, match="ir_k=30 must not exceed ir_top_n=5"):
        build("IRRRD", dict(tiny, **dict(SMALL_IR, ir_k=30)))
    with pytest.raises(ValueError, match="ir_top_n \\+ ir_l = 25 needs 25 unobserved users per item, but item '.+' \\(internal id 2\\)"):
        build("IRRRD", dict(tiny, ir_top_n=20, ir_k=5, ir_l=5))
    with pytest.raises(ValueError, match="ir_top_n \\+ ir_l = 505 needs 505 unobserved users per item"):
        build("IRRRD", dict(tiny, ir_top_n=500, ir_k=5, ir_l=5))


def _ir_batch_loss_by_hand(net, items, k=3):
    users = net.term("IR").lists[items]
    u, v = net.student.user_embedding.weight, net.student.item_embedding.weight
    scores = (u[users] * v[items].unsqueeze(1)).sum(-1)
    return relaxed_ranking_loss(scores[:, :k], scores[:, k:])


def test_ir_max_rows_samples_the_batch_items_and_scales_to_their_number(tiny):
    """ir_max_rows: k of the batch's items, uniformly, the loss scaled by (batch items / k): its
    mean over the draws is the full batch loss."""
    _, net, train = build("IRRRD", dict(tiny, **SMALL_IR, ir_max_rows=4))
    ir = net.term("IR")
    batch = net.batch(next(iter(train)))
    net.term("RRD").raw_loss(batch)
    everything = torch.unique(batch.ranked_items)
    n = everything.numel()
    assert n > 4
    full = _ir_batch_loss_by_hand(net, everything).item()
    # the draw is the stream's: replay it by hand
    ir.start_epoch(0)
    replay = torch.Generator().manual_seed(ir._generator.initial_seed())
    chosen = everything[torch.randperm(n, generator=replay)[:4]]
    assert ir.raw_loss(batch).item() == pytest.approx(_ir_batch_loss_by_hand(net, chosen).item() * n / 4, rel=1e-5)
    # unbiased: the per-item losses' mean x n is the full loss, whichever 4 are drawn on average
    per_item = torch.stack([_ir_batch_loss_by_hand(net, everything[i:i + 1]) for i in range(n)])
    assert per_item.sum().item() == pytest.approx(full, rel=1e-5)
    draws = [ir.raw_loss(batch).item() for _ in range(400)]
    assert np.mean(draws) == pytest.approx(full, rel=0.05)
    # the same epoch replays the same draws (a resumed run distils the same items)
    ir.start_epoch(3)
    first = [ir.raw_loss(batch).item() for _ in range(3)]
    ir.start_epoch(3)
    assert [ir.raw_loss(batch).item() for _ in range(3)] == first


def test_ir_rows_epoch_regularises_each_item_once_per_epoch(tiny):
    """ir_rows: epoch: batch b takes the b-th of B slices of a per-epoch order of all items, the
    loss scaled by (batch items / slice size); an epoch's slices cover every item once."""
    _, net, train = build("IRRRD", dict(tiny, **SMALL_IR, ir_rows="epoch"))
    ir = net.term("IR")
    assert ir.slices.batches == len(train)
    ir.start_epoch(2)
    seen = []
    for interaction in train:
        batch = net.batch(interaction)
        net.term("RRD").raw_loss(batch)
        n = torch.unique(batch.ranked_items).numel()
        replay = list(ir._rotation.order.tolist())
        index = ir._rotation.batch
        slice_items = ir._rotation.order[index * len(replay) // ir._rotation.slices:
                                         (index + 1) * len(replay) // ir._rotation.slices]
        loss = ir.raw_loss(batch)
        assert loss.item() == pytest.approx(
            _ir_batch_loss_by_hand(net, slice_items).item() * n / slice_items.numel(), rel=1e-5)
        seen += slice_items.tolist()
    assert sorted(seen) == list(range(1, net.n_items))
    with pytest.raises(ValueError, match="ir_max_rows=5 applies to ir_rows='batch' only"):
        build("IRRRD", dict(tiny, **SMALL_IR, ir_rows="epoch", ir_max_rows=5))
    with pytest.raises(ValueError, match="ir_rows"):
        build("IRRRD", dict(tiny, **SMALL_IR, ir_rows="user"))
    # the authors' rows stay the default, and are what a cell recorded before these keys ran
    from recbole.config import Config

    from recbole_derrd.harness.cell_settings import describe
    from recbole_derrd.registration import PLUGIN_MODELS

    def described(**changes):
        config = Config(model="IRRRD", config_dict=dict(tiny, **SMALL_IR, **changes))
        return describe("IRRRD", config, PLUGIN_MODELS["IRRRD"])["settings"]

    assert "ir_rows" not in described() and "ir_max_rows" not in described()
    assert described(ir_rows="epoch")["ir_rows"] == "epoch" and described(ir_max_rows=64)["ir_max_rows"] == 64
