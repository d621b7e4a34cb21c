"""The distilled models on real RecBole data objects: config layering, teacher, loss balance."""

import copy
import sys

import pytest
import torch
from recbole.config import Config
from recbole.data import create_dataset, data_preparation
from recbole.utils import InputType, get_model, get_trainer, init_seed

import recbole_derrd
from recbole_derrd.config import teacher_config
from recbole_derrd.teacher import prepare_distillation


def build(model, config_dict, prepare=True):
    config = Config(model=model, config_dict=config_dict)
    init_seed(config["seed"], config["reproducibility"])
    data = create_dataset(config)
    train, valid, test = data_preparation(config, data)
    init_seed(config["seed"], config["reproducibility"])
    net = get_model(model)(config, train._dataset)
    if prepare:
        prepare_distillation(net, train, valid)
        net.start_epoch(0)
    return config, net, train, valid, test


def test_registration_with_stock_lookups(tiny):
    assert get_model("DERRD") is recbole_derrd.DERRD
    assert get_model("DE") is recbole_derrd.DE
    assert get_model("RRD") is recbole_derrd.RRD
    config = Config(model="DERRD", config_dict=tiny)
    assert get_trainer(config["MODEL_TYPE"], "DERRD") is recbole_derrd.DistillationTrainer


def test_plugin_defaults_and_precedence(tiny, monkeypatch, tmp_path):
    config = Config(model="DERRD", config_dict={k: v for k, v in tiny.items() if k != "embedding_size"})
    assert config["de_num_experts"] == 4            # dict beats yaml
    assert config["rrd_temperature"] == 10.0        # RRD.yaml
    assert config["de_anneal_epochs"] == 1000       # DE.yaml
    assert config["embedding_size"] == 20           # distillation.yaml beats BPR.yaml's 64
    assert config["teacher_model"] == "BPR"
    assert config["MODEL_INPUT_TYPE"] == InputType.PAIRWISE

    config_file = tmp_path / "mine.yaml"
    config_file.write_text("rrd_k: 3\nde_weight: 0.5\n")
    dict_part = dict(tiny, de_weight=0.25)
    monkeypatch.setattr(sys, "argv", ["x", "--de_weight=0.125"])
    config = Config(model="DERRD", config_file_list=[str(config_file)], config_dict=dict_part)
    assert config["rrd_k"] == 5 and config["de_weight"] == 0.125  # dict > file; cmd > dict
    monkeypatch.setattr(sys, "argv", ["x"])
    config = Config(model="DERRD", config_file_list=[str(config_file)],
                    config_dict={k: v for k, v in tiny.items() if k != "rrd_k"})
    assert config["rrd_k"] == 3 and config["de_weight"] == 0.5  # file > yaml


def test_backbone_defaults_reach_student_and_teacher(tiny):
    config = Config(model="DE", config_dict=dict(tiny, student_model="LightGCN"))
    assert config["n_layers"] == 2 and config["reg_weight"] == 1e-05  # LightGCN.yaml
    assert config["t_embedding_size"] == 16
    tconfig = teacher_config(config)
    assert tconfig["model"] == "BPR" and tconfig["embedding_size"] == 16
    assert config["embedding_size"] == 8

    config = Config(model="DE", config_dict=dict(tiny, teacher_model="LightGCN", t_n_layers=3))
    tconfig = teacher_config(config)
    assert config["t_reg_weight"] == 1e-05                      # teacher's stock yaml, prefixed
    assert tconfig["n_layers"] == 3 and tconfig["reg_weight"] == 1e-05
    assert tconfig["model"] == "LightGCN"


def test_unsupported_backbone_is_a_clear_error(tiny):
    with pytest.raises(ValueError, match=r"student_model='SASRec' is sequential but teacher_model='BPR' is "
                                         r"general"):
        Config(model="DERRD", config_dict=dict(tiny, student_model="SASRec"))
    with pytest.raises(ValueError, match=r"teacher_model='NoSuchModel' is not a RecBole general or sequential "
                                         r"recommender"):
        Config(model="RRD", config_dict=dict(tiny, teacher_model="NoSuchModel"))
    with pytest.raises(ValueError, match=r"DERRD: its DE term distils user and item representations, "
                                         r"but teacher_model='Pop' only scores"):
        Config(model="DERRD", config_dict=dict(tiny, teacher_model="Pop"))


def test_student_initialisation_matches_stock_backbone(tiny):
    config, net, train, _, _ = build("DERRD", tiny, prepare=False)
    init_seed(config["seed"], config["reproducibility"])
    stock = get_model("BPR")(config, train._dataset)
    torch.testing.assert_close(net.student.user_embedding.weight, stock.user_embedding.weight)


def test_teacher_is_frozen_and_outside_the_module(tiny):
    config, net, train, _, _ = build("DERRD", tiny)
    teacher = net.teacher
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    own = {id(p) for p in net.parameters()}
    assert not any(id(p) in own for p in teacher.parameters())
    assert not any(k.startswith("teacher") or "_teacher" in k for k in net.state_dict())
    assert copy.deepcopy(net).teacher is teacher  # get_flops' deep copy shares it
    trainer = get_trainer(config["MODEL_TYPE"], "DERRD")(config, net)
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in in_optimizer for p in teacher.parameters())

    before = [p.clone() for p in teacher.parameters()]
    batch = next(iter(train))
    sum(net.calculate_loss(batch)).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert net.student.user_embedding.weight.grad.abs().sum() > 0
    assert net.user_experts.w1.grad.abs().sum() > 0
    assert net.user_experts.selection.weight.grad.abs().sum() > 0
    assert net.item_experts.w2.grad.abs().sum() > 0
    for old, new in zip(before, teacher.parameters()):
        torch.testing.assert_close(old, new)


def test_loss_balance_matches_official_sums(tiny):
    """per_row: (w * KD_sum / rows) : mean base == official (w * KD_sum) : summed base."""
    config, net, train, _, _ = build("DERRD", dict(tiny, de_weight=0.01, rrd_weight=0.001, de_rows="batch"))
    batch = next(iter(train))
    rows = len(batch)
    torch.manual_seed(3)
    base, de, rrd = net.calculate_loss(batch)
    torch.manual_seed(3)
    de_sum = net.term("DE").raw_loss(net.batch(batch))
    rrd_sum = net.term("RRD").raw_loss(net.batch(batch))
    user, pos, neg = batch["user_id"], batch["item_id"], batch["neg_item_id"]
    u, p, n = net.student.user_embedding(user), net.student.item_embedding(pos), net.student.item_embedding(neg)
    bpr_sum = -torch.nn.functional.logsigmoid((u * p).sum(1) - (u * n).sum(1)).sum()
    assert (de / base).item() == pytest.approx((0.01 * de_sum / bpr_sum).item(), rel=1e-4)
    assert (rrd / base).item() == pytest.approx((0.001 * rrd_sum / bpr_sum).item(), rel=1e-4)
    assert base.item() * rows == pytest.approx(bpr_sum.item(), rel=1e-4)

    config, net, train, _, _ = build("DERRD", dict(tiny, kd_reduction="sum", de_rows="batch"))
    batch = next(iter(train))
    torch.manual_seed(3)
    _, de, rrd = net.calculate_loss(batch)
    torch.manual_seed(3)
    assert de.item() == pytest.approx(0.01 * net.term("DE").raw_loss(net.batch(batch)).item(), rel=1e-5)
    assert rrd.item() == pytest.approx(0.001 * net.term("RRD").raw_loss(net.batch(batch)).item(), rel=1e-5)


def test_de_uses_unique_users_and_items(tiny, monkeypatch):
    from recbole_derrd.distillation import experts as experts_module

    config, net, train, _, _ = build("DE", dict(tiny, de_rows="batch"))  # the paper's rows
    batch = next(iter(train))
    # noise-free selection, so the one merged item call and the definition's two calls match
    plain = experts_module.gumbel_softmax
    monkeypatch.setattr(experts_module, "gumbel_softmax",
                        lambda alpha, tau: plain(alpha, tau, torch.zeros_like(alpha)))
    loss = net.term("DE").raw_loss(net.batch(batch))
    users = torch.unique(batch["user_id"])
    pos, neg = torch.unique(batch["item_id"]), torch.unique(batch["neg_item_id"])
    s, t = net.student, net.teacher
    expected = net.user_experts.loss(s.user_embedding(users), t.user_embedding(users), net.term("DE").tau)
    expected = expected + 0.5 * net.item_experts.loss(s.item_embedding(pos), t.item_embedding(pos), net.term("DE").tau)
    expected = expected + 0.5 * net.item_experts.loss(s.item_embedding(neg), t.item_embedding(neg), net.term("DE").tau)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def _noise_free(monkeypatch):
    from recbole_derrd.distillation import experts as experts_module

    plain = experts_module.gumbel_softmax
    monkeypatch.setattr(experts_module, "gumbel_softmax",
                        lambda alpha, tau: plain(alpha, tau, torch.zeros_like(alpha)))


def _recorded_parts(term, monkeypatch):
    """Wrap DE's per-side call to record (ids, row weight) of each side."""
    calls, plain = [], term._part

    def record(experts, student_repr, teacher_repr, ids, row_weight):
        calls.append((ids.clone(), row_weight))
        return plain(experts, student_repr, teacher_repr, ids, row_weight)

    monkeypatch.setattr(term, "_part", record)
    return calls


def test_de_max_rows_samples_and_rescales(tiny, monkeypatch):
    _noise_free(monkeypatch)
    _, net, train, _, _ = build("DE", dict(tiny, de_rows="batch", de_max_rows=5))
    term, batch = net.term("DE"), next(iter(train))
    users = torch.unique(batch["user_id"])
    item_rows = torch.cat([torch.unique(batch["item_id"]), torch.unique(batch["neg_item_id"])])
    calls = _recorded_parts(term, monkeypatch)
    loss = term.raw_loss(net.batch(batch))
    (user_ids, user_w), (item_ids, item_w) = calls
    assert len(user_ids) == 5 and len(set(user_ids.tolist())) == 5
    assert set(user_ids.tolist()) <= set(users.tolist())
    assert set(item_ids.tolist()) <= set(item_rows.tolist()) and len(item_ids) == 5
    # each kept row stands for (distinct rows / kept rows) of the paper's rows (items: 0.5 each)
    assert user_w == pytest.approx(len(users) / 5)
    assert item_w == pytest.approx(0.5 * len(item_rows) / 5)
    s, t = net.student, net.teacher
    expected = (user_w * net.user_experts.loss(s.user_embedding(user_ids), t.user_embedding(user_ids), term.tau)
                + item_w * net.item_experts.loss(s.item_embedding(item_ids), t.item_embedding(item_ids), term.tau))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_de_max_rows_is_unbiased_and_off_when_it_does_not_bind(tiny, monkeypatch):
    _noise_free(monkeypatch)
    _, paper, train, _, _ = build("DE", dict(tiny, de_rows="batch"))
    batch = next(iter(train))
    full = paper.term("DE").raw_loss(paper.batch(batch)).item()
    _, roomy, _, _, _ = build("DE", dict(tiny, de_rows="batch", de_max_rows=100000))
    assert roomy.term("DE").raw_loss(roomy.batch(batch)).item() == pytest.approx(full, rel=1e-6)
    _, capped, _, _, _ = build("DE", dict(tiny, de_rows="batch", de_max_rows=8))
    with torch.no_grad():
        draws = torch.tensor([capped.term("DE").raw_loss(capped.batch(batch)).item() for _ in range(400)])
    assert len(set(draws.tolist())) > 100  # rows really are redrawn per batch
    standard_error = draws.std().item() / 20
    assert abs(draws.mean().item() - full) < 4 * standard_error


def test_de_rows_epoch_distils_every_entity_once_per_epoch(tiny, monkeypatch):
    _noise_free(monkeypatch)
    _, net, train, _, _ = build("DE", dict(tiny, de_rows="epoch"))
    term = net.term("DE")
    assert term.slices.batches == len(train) == sum(1 for _ in train) > 1
    calls = _recorded_parts(term, monkeypatch)
    masses = []
    for batch in train:
        term.raw_loss(net.batch(batch))
        distinct_items = len(torch.unique(batch["item_id"])) + len(torch.unique(batch["neg_item_id"]))
        masses.append((len(torch.unique(batch["user_id"])), 0.5 * distinct_items))
    users = [ids for ids, _ in calls[0::2]]
    items = [ids for ids, _ in calls[1::2]]
    assert sorted(torch.cat(users).tolist()) == list(range(1, net.n_users))
    assert sorted(torch.cat(items).tolist()) == list(range(1, net.n_items))
    for (u_ids, u_w), (i_ids, i_w), (u_mass, i_mass) in zip(calls[0::2], calls[1::2], masses):
        assert u_w == pytest.approx(u_mass / len(u_ids)) and i_w == pytest.approx(i_mass / len(i_ids))
    # the same (seed, epoch) draws the same order: a resumed epoch distils the same rows
    calls.clear()
    net.start_epoch(0)
    term.raw_loss(net.batch(next(iter(train))))
    assert torch.equal(calls[0][0], users[0])
    net.start_epoch(1)
    calls.clear()
    term.raw_loss(net.batch(next(iter(train))))
    assert not torch.equal(calls[0][0], users[0])


def test_de_every_distils_one_batch_in_k_with_k_times_the_loss(tiny, monkeypatch):
    _noise_free(monkeypatch)
    _, every, train, _, _ = build("DE", dict(tiny, de_rows="batch", de_every=3))
    _, paper, _, _, _ = build("DE", dict(tiny, de_rows="batch"))
    batches = list(train)
    assert len(batches) >= 4
    experts = list(every.user_experts.parameters()) + list(every.item_experts.parameters())
    for step, batch in enumerate(batches):
        every.zero_grad(set_to_none=True)
        loss = every.term("DE").raw_loss(every.batch(batch))
        if step % 3:
            # skipped: no loss and no gradient, so the optimizer leaves the experts alone
            assert loss.item() == 0 and not loss.requires_grad
            assert all(p.grad is None for p in experts)
        else:
            # the same weights on both models: the batch's paper loss, times k
            expected = paper.term("DE").raw_loss(paper.batch(batch)).item()
            assert loss.item() == pytest.approx(3 * expected, rel=1e-5)
            loss.backward()
            assert all(p.grad is not None for p in experts)
    # a new epoch starts the count again: its first batch distils
    every.start_epoch(1)
    assert every.term("DE").raw_loss(every.batch(batches[1])).requires_grad


def test_de_every_with_epoch_rows_keeps_each_entity_once_per_epoch(tiny, monkeypatch):
    _noise_free(monkeypatch)
    _, net, train, _, _ = build("DE", dict(tiny, de_rows="epoch", de_every=2))
    term = net.term("DE")
    calls = _recorded_parts(term, monkeypatch)
    masses = []
    for step, batch in enumerate(train):
        term.raw_loss(net.batch(batch))
        if step % 2 == 0:
            distinct_items = len(torch.unique(batch["item_id"])) + len(torch.unique(batch["neg_item_id"]))
            masses.append((len(torch.unique(batch["user_id"])), 0.5 * distinct_items))
    assert len(calls) == 2 * len(masses) == 2 * -(-len(train) // 2)
    users = torch.cat([ids for ids, _ in calls[0::2]])
    items = torch.cat([ids for ids, _ in calls[1::2]])
    assert sorted(users.tolist()) == list(range(1, net.n_users))
    assert sorted(items.tolist()) == list(range(1, net.n_items))
    # each row weighs what it weighs with de_every 1: the batch's mass times k over k times the rows
    for (u_ids, u_w), (i_ids, i_w), (u_mass, i_mass) in zip(calls[0::2], calls[1::2], masses):
        assert u_w == pytest.approx(2 * u_mass / len(u_ids)) and i_w == pytest.approx(2 * i_mass / len(i_ids))


def _rrd_by_hand(net, users):
    """RRD's raw loss over ``users``' lists of this epoch, from the embeddings."""
    from recbole_derrd.distillation import relaxed_ranking_loss

    term, student = net.term("RRD"), net.student
    items = term.lists.index_select(0, users)
    scores = (student.user_embedding(users).unsqueeze(1) * student.item_embedding(items)).sum(-1)
    return relaxed_ranking_loss(scores[:, : term.k], scores[:, term.k:])


def test_rrd_max_rows_ranks_a_sample_of_the_batch_users_and_rescales(tiny):
    _, net, train, _, _ = build("DERRD", dict(tiny, rrd_max_rows=5))
    term, batch = net.term("RRD"), next(iter(train))
    users = torch.unique(batch["user_id"])
    assert len(users) > 5
    generator = torch.Generator()
    generator.set_state(term._generator.get_state())
    kept = users[torch.randperm(len(users), generator=generator)[:5]]  # the draw the term will make
    bound = net.batch(batch)
    loss = term.raw_loss(bound)
    # each kept user stands for (distinct users / kept users) of the paper's rows
    expected = _rrd_by_hand(net, kept) * (len(users) / 5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert bound.ranked_items.shape == (5, term.k + term.l)  # what IR would regularise: the kept lists


def test_rrd_max_rows_is_unbiased_and_off_when_it_does_not_bind(tiny):
    _, paper, train, _, _ = build("DERRD", dict(tiny))
    batch = next(iter(train))
    users = torch.unique(batch["user_id"])
    full = paper.term("RRD").raw_loss(paper.batch(batch)).item()
    assert full == pytest.approx(_rrd_by_hand(paper, users).item(), rel=1e-5)
    _, roomy, _, _, _ = build("DERRD", dict(tiny, rrd_max_rows=100000))
    assert roomy.term("RRD").raw_loss(roomy.batch(batch)).item() == pytest.approx(full, rel=1e-6)
    _, capped, _, _, _ = build("DERRD", dict(tiny, rrd_max_rows=4))
    with torch.no_grad():
        draws = torch.tensor([capped.term("RRD").raw_loss(capped.batch(batch)).item() for _ in range(400)])
    assert len(set(draws.tolist())) > 100  # users really are redrawn per batch
    standard_error = draws.std().item() / 20
    assert abs(draws.mean().item() - full) < 4 * standard_error


def test_rrd_max_rows_draws_the_same_users_for_the_same_epoch(tiny, monkeypatch):
    _, net, train, _, _ = build("RRD", dict(tiny, rrd_max_rows=3))
    term, batch = net.term("RRD"), next(iter(train))
    ranked, plain_lists = [], term.lists_of
    monkeypatch.setattr(term, "lists_of", lambda rows, b=None: ranked.append(rows.clone()) or plain_lists(rows, b))

    def kept_users(epoch):
        net.start_epoch(epoch)
        term.raw_loss(net.batch(batch))
        return ranked[-1]

    first = kept_users(2)
    assert len(first) == 3 and set(first.tolist()) <= set(batch["user_id"].tolist())
    assert torch.equal(kept_users(2), first)  # a resumed epoch ranks the same users' lists
    assert any(not torch.equal(kept_users(e), first) for e in (3, 4, 5))


def test_reference_implementation_gives_the_same_losses(tiny, monkeypatch):
    """kd_implementation: reference (the official code's computation) == the fast paths."""
    _noise_free(monkeypatch)
    _, fast, train, _, _ = build("DERRD", dict(tiny, de_rows="batch"))
    _, reference, _, _, _ = build("DERRD", dict(tiny, kd_implementation="reference", de_rows="batch"))
    batch = next(iter(train))
    for name in ("DE", "RRD"):
        expected = fast.term(name).raw_loss(fast.batch(batch)).item()
        assert reference.term(name).raw_loss(reference.batch(batch)).item() == pytest.approx(expected, rel=1e-5)
    assert reference.term("RRD").loss_function is not fast.term("RRD").loss_function


def test_tau_follows_epochs(tiny):
    _, net, _, _, _ = build("DE", dict(tiny, de_anneal_epochs=10))
    net.start_epoch(5)
    assert net.term("DE").tau == pytest.approx(1e-5)


@pytest.mark.parametrize("key,value,message", [
    ("kd_reduction", "mean", "kd_reduction='mean'"),
    ("de_weight", -1, "de_weight=-1"),
    ("de_tau_start", 0, "de_tau_start=0"),
    ("de_rows", "all", "de_rows='all' must be one of"),
    ("de_max_rows", -1, "de_max_rows=-1"),
    ("de_max_rows", 2.5, "de_max_rows=2.5"),
    ("de_every", 0, "de_every=0 must be a positive integer"),
    ("de_every", 1.5, "de_every=1.5"),
    ("kd_implementation", "slow", "kd_implementation='slow'"),
    ("rrd_k", 30, "rrd_k=30 must not exceed rrd_top_n=20"),
    ("rrd_temperature", -2.0, "rrd_temperature=-2.0"),
    ("rrd_sampling", "best", "rrd_sampling='best'"),
    ("rrd_l", 200, "rrd_top_n \\+ rrd_l = 220 needs 220 unobserved items per user"),
    ("rrd_max_rows", -3, "rrd_max_rows=-3"),
])
def test_bad_settings_are_clear_errors(tiny, key, value, message):
    with pytest.raises(ValueError, match=message):
        build("DERRD", dict(tiny, **{key: value}), prepare=False)


@pytest.mark.parametrize("settings,message", [
    (dict(de_rows="epoch", de_max_rows=10), "de_max_rows=10 applies to de_rows='batch' only"),
    (dict(kd_implementation="reference", de_rows="epoch"), "kd_implementation='reference' computes the paper's"),
    (dict(kd_implementation="reference", de_rows="batch", de_every=2), "de_every=1 \\(got 'batch', 0 and 2\\)"),
    (dict(kd_implementation="reference", de_rows="batch", rrd_max_rows=8),
     "computes the paper's RRD rows: it needs rrd_max_rows=0"),
])
def test_conflicting_de_settings_are_clear_errors(tiny, settings, message):
    with pytest.raises(ValueError, match=message):
        build("DERRD", dict(tiny, **settings), prepare=False)


@pytest.mark.parametrize("student,teacher", [("LightGCN", "LightGCN"), ("BPR", "LightGCN"),
                                             ("NeuMF", "NeuMF"), ("BPR", "NeuMF")])
def test_backbone_pairs_train(tiny, student, teacher):
    """Homogeneous and mixed pairs (LightGCN needs the compat dok_matrix shim on scipy >= 1.13)."""
    sizes = {"mf_embedding_size": 8, "mlp_embedding_size": 8, "mlp_hidden_size": [16, 8],
             "t_mf_embedding_size": 16, "t_mlp_embedding_size": 16}
    config, net, train, _, _ = build("DERRD", dict(tiny, student_model=student, teacher_model=teacher,
                                                   t_epochs=1, **sizes))
    batch = next(iter(train))
    parts = net.calculate_loss(batch)
    assert len(parts) == 3 and all(torch.isfinite(p) for p in parts)
    sum(parts).backward()
    grads = [p.grad for p in net.student.parameters() if p.grad is not None]
    assert grads and sum(g.abs().sum() for g in grads) > 0


def test_neumf_student_is_pointwise_and_gets_its_stock_defaults(tiny):
    config = Config(model="DERRD", config_dict=dict(tiny, student_model="NeuMF", teacher_model="NeuMF"))
    assert config["MODEL_INPUT_TYPE"] == InputType.POINTWISE       # follows the student
    assert config["mlp_hidden_size"] == [128, 64]                   # NeuMF.yaml reaches the student
    assert config["t_mlp_hidden_size"] == [128, 64]                 # ... and the teacher, prefixed
    config, net, train, _, _ = build("DERRD", dict(tiny, student_model="NeuMF", teacher_model="NeuMF",
                                                   t_epochs=1, mlp_hidden_size=[32, 16]))
    assert [m.out_features for m in net.student.mlp_layers.mlp_layers if hasattr(m, "out_features")] == [32, 16]
    batch = next(iter(train))
    assert "label" in batch and "neg_item_id" not in batch
    positives, negatives = net._batch_items(batch)
    assert len(positives) == int((batch["label"] > 0.5).sum()) and len(negatives) > 0
    # DE distils the concatenated [GMF, MLP] embeddings of NeuMF.
    assert net.student_adapter.user_dim == 64 + 64
    users = torch.tensor([1, 2])
    torch.testing.assert_close(net.teacher_adapter.user_repr(users), torch.cat(
        [net.teacher.user_mf_embedding(users), net.teacher.user_mlp_embedding(users)], -1))


def test_neumf_catalogue_scores_match_pairwise_scores(tiny):
    config, net, train, _, _ = build("RRD", dict(tiny, student_model="NeuMF", teacher_model="NeuMF",
                                                 t_epochs=1))
    adapter = net.teacher_adapter
    adapter.PAIRS_PER_PASS = 500  # force several passes
    users = torch.arange(1, 8)
    with torch.no_grad():
        full = adapter.all_scores(users)
        items = torch.arange(net.n_items).expand(len(users), -1)
        pairwise = torch.sigmoid(adapter.score(users, items))
        direct = net.teacher.predict({"user_id": users.repeat_interleave(net.n_items),
                                      "item_id": items.reshape(-1)}).view(len(users), -1)
    torch.testing.assert_close(torch.sigmoid(full), pairwise)
    torch.testing.assert_close(pairwise, direct)
    # the split first layer (eval mode) against the pair-by-pair forward, in logits
    assert not net.teacher.training
    torch.testing.assert_close(full, adapter._all_scores_pairwise(users), rtol=1e-5, atol=1e-5)


def test_shipped_protocols(tiny):
    path = recbole_derrd.protocol_file("loo_uni499")
    config = Config(model="DERRD", config_file_list=[path], config_dict={k: v for k, v in tiny.items()
                                                                         if k not in ("eval_args", "topk")})
    assert config["eval_args"]["mode"] == {"valid": "uni499", "test": "uni499"}
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"} and config["topk"] == [5, 10, 20]
    assert config["valid_metric"] == "NDCG@10"
    assert recbole_derrd.protocol_file("loo_full").endswith("loo_full.yaml")
    with pytest.raises(ValueError, match="unknown protocol 'paper'; shipped protocols: loo_full, loo_uni499"):
        recbole_derrd.protocol_file("paper")


def test_configuration_reference_documents_every_plugin_key():
    import os

    from recbole_derrd.config import plugin_defaults, read_yaml, recbole_properties_dir

    reference = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "configuration.md")).read()
    stock = set(read_yaml(os.path.join(recbole_properties_dir(), "overall.yaml")))
    keys = set()
    for cls in recbole_derrd.PLUGIN_MODELS.values():
        keys.update(plugin_defaults(cls))
    for key in sorted(keys):
        where = "`%s`" % key if key in stock else "| `%s` |" % key
        assert where in reference, "docs/configuration.md does not document %s" % key


def test_fused_adam_same_update_rule_and_used_by_the_trainer(tiny):
    from recbole_derrd.distillation_trainer import fused_adam

    torch.manual_seed(0)
    start = [torch.randn(7, 3), torch.randn(5)]
    results = []
    for make in (lambda ps: torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3),
                 lambda ps: fused_adam(torch.optim.Adam(ps, lr=1e-2, weight_decay=1e-3))):
        params = [torch.nn.Parameter(p.clone()) for p in start]
        optimizer = make(params)
        for step in range(5):
            optimizer.zero_grad()
            sum((p * (step + 1.0)).pow(2).sum() for p in params).backward()
            optimizer.step()
        results.append(params)
    assert results[1] is not None
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    assert fused_adam(sgd) is sgd

    config, net, train, valid, _ = build("DERRD", tiny, prepare=False)
    trainer = get_trainer(config["MODEL_TYPE"], "DERRD")(config, net)
    assert trainer.optimizer.defaults["fused"] is True
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {id(p) for p in net.parameters()}
    config_off = Config(model="DERRD", config_dict=dict(tiny, fused_adam=False))
    trainer_off = get_trainer(config_off["MODEL_TYPE"], "DERRD")(config_off, net)
    assert not trainer_off.optimizer.defaults.get("fused")


@pytest.mark.parametrize("n,batches,world", [(11, 3, 1), (11, 3, 2), (101, 4, 3), (5, 4, 2)])
def test_de_rotation_shares_an_epoch_among_ranks(n, batches, world):
    from recbole_derrd.terms.rows import Rotation

    taken = []
    for rank in range(world):
        rotation = Rotation(n, torch.Generator().manual_seed(3), batches, rank, world)
        taken += [rotation.next("cpu") for _ in range(batches)]
    assert all(len(ids) for ids in taken)
    flat = torch.cat(taken).tolist()
    assert set(flat) == set(range(1, n))  # every id once an epoch, 0 (padding) never
    if batches * world <= n - 1:
        assert len(flat) == n - 1  # and no id twice


def test_epoch_slices_cut_an_epoch_for_every_distilling_batch():
    """DE, IR and HTD build their rotations through EpochSlices: unprepared it names the key that
    needed it; prepared, one slice per ``every``-th batch (ceil(batches / every) slices)."""
    from types import SimpleNamespace

    from recbole_derrd.terms.rows import EpochSlices

    slices = EpochSlices()
    with pytest.raises(RuntimeError, match="ir_rows='epoch' needs the batches per epoch; use prepare_distillation"):
        slices.rotation(11, torch.Generator(), "ir_rows='epoch'")
    slices.prepare(SimpleNamespace(batches_per_epoch=7))
    assert (slices.batches, slices.rank, slices.world_size) == (7, 0, 1)
    rotation = slices.rotation(11, torch.Generator().manual_seed(0), "de_rows='epoch'", every=3)
    assert rotation.slices == 3  # batches 0, 3 and 6 distil
    assert sorted(torch.cat([rotation.next("cpu") for _ in range(3)]).tolist()) == list(range(1, 11))
