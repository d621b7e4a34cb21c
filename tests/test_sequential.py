"""Sequential recommenders as teacher and student: the adapters score like the models, the RRD
lists come from the teacher's ranking for the same prefix, the run takes its student's model
type, and the start-up checks refuse what cannot work with the reason."""

import pytest
import torch
from recbole.config import Config
from recbole.utils import InputType, ModelType

from recbole_derrd.backbone_support import check_terms_fit
from recbole_derrd.distillation.query_lists import QueryListSampler
from recbole_derrd.model import DERRD, RD
from recbole_derrd.quick_start import run_recbole
from recbole_derrd.sequential_backbones import (SEQUENTIAL_ADAPTERS, SequentialAdapter,
                                                SequentialScoreOnlyAdapter)
from recbole_derrd.backbones import adapter_class, adapter_for

from conftest import untrained_model


def first_batch(train):
    return next(iter(train))


#: stock settings a model needs on the tiny data (key -> value)
TINY = {"LightSANs": {"k_interests": 3}, "FEARec": {"n_layers": 2}}


# --------------------------------------------------------------------------- adapters
@pytest.mark.parametrize("name", sorted(SEQUENTIAL_ADAPTERS) + ["FPMC", "RepeatNet", "TransRec"])
def test_sequential_adapters_score_like_the_model(name, tiny_seq):
    settings = dict(tiny_seq, model=name, **TINY.get(name, {}))
    if name in ("FPMC", "TransRec"):
        settings.update(loss_type="BPR", train_neg_sample_args={"distribution": "uniform", "sample_num": 1})
    model, train = untrained_model(name, settings)
    model.eval()
    batch = first_batch(train)
    adapter = adapter_for(model)
    expected_class = SEQUENTIAL_ADAPTERS.get(name, SequentialScoreOnlyAdapter)
    assert type(adapter) is expected_class
    adapter.bind(batch)
    rows = torch.arange(len(batch))
    items = torch.randint(1, model.n_items, (len(batch), 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        own = model.full_sort_predict(batch).view(len(batch), -1).float()
        torch.testing.assert_close(adapter.all_scores(rows), own, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(adapter.score(rows, items), own.gather(1, items), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(adapter.all_scores(rows[3:9]), own[3:9], rtol=1e-4, atol=1e-4)
        if adapter.has_representations:
            assert adapter.user_repr(rows[:5]).shape == (5, adapter.user_dim)
            assert adapter.item_repr(items[0]).shape == (7, adapter.item_dim)


def test_an_adapter_needs_a_bound_batch(tiny_seq):
    model, _ = untrained_model("SASRec", dict(tiny_seq, model="SASRec"))
    with pytest.raises(RuntimeError, match="no batch bound"):
        adapter_for(model).all_scores(torch.arange(3))


# --------------------------------------------------------------------------- per-batch lists
def test_query_lists_by_hand():
    # two queries over 8 items (0 is padding); row 0 excludes item 5, row 1 items 2 and 7
    scores = torch.tensor([[9., 1., 7., 6., 5., 8., 4., 3.],
                           [9., 8., 7., 6., 5., 4., 3., 2.]])
    excluded = torch.tensor([[5, 0], [2, 7]])
    sampler = QueryListSampler(8, top_n=3, k=2, l=2, temperature=1.0, mode="top")
    lists = sampler.draw(lambda rows: scores[rows], torch.arange(2), excluded, torch.Generator().manual_seed(0))
    # row 0 without 0 and 5: top-3 = 2 (7), 3 (6), 4 (5); row 1 without 0, 2, 7: 1, 3, 4
    assert lists[:, :2].tolist() == [[2, 3], [1, 3]]
    assert set(lists[0, 2:].tolist()) <= {1, 6, 7} and len(set(lists[0, 2:].tolist())) == 2
    assert set(lists[1, 2:].tolist()) == {5, 6}  # the only two items left


def test_query_lists_follow_the_rank_discounted_law():
    # one row, top-3 = items 1, 2, 3 in that order; K = 1 drawn with p ~ exp(-rank / T), T = 1
    scores = torch.tensor([[0., 3., 2., 1.] + [-1.0] * 8]).expand(20000, -1)
    sampler = QueryListSampler(12, top_n=3, k=1, l=1, temperature=1.0)
    lists = sampler.draw(lambda rows: scores[rows], torch.arange(20000), torch.zeros(20000, 1, dtype=torch.long),
                         torch.Generator().manual_seed(1))
    weights = torch.exp(-torch.arange(1, 4, dtype=torch.float64))
    expected = weights / weights.sum()  # .665, .245, .090
    observed = torch.bincount(lists[:, 0], minlength=4)[1:].double() / 20000
    torch.testing.assert_close(observed, expected, atol=0.015, rtol=0)
    assert not bool(((lists[:, 1] >= 1) & (lists[:, 1] <= 3)).any())  # never from the top-3


def test_query_lists_are_reproducible_ordered_and_blocked():
    generator = torch.Generator().manual_seed(3)
    scores = torch.randn(50, 40, generator=generator)
    excluded = torch.randint(1, 40, (50, 4), generator=generator)
    sampler = QueryListSampler(40, top_n=10, k=4, l=6, temperature=3.0)
    draw = lambda s, seed: s.draw(lambda rows: scores[rows], torch.arange(50), excluded,
                                  torch.Generator().manual_seed(seed))
    first, again = draw(sampler, 5), draw(sampler, 5)
    assert torch.equal(first, again)
    masked = scores.clone().scatter_(1, excluded, -torch.inf)
    masked[:, 0] = -torch.inf
    top = torch.topk(masked, 10, dim=1).indices
    for row in range(50):
        interesting, uninteresting = first[row, :4].tolist(), first[row, 4:].tolist()
        rank = [top[row].tolist().index(item) for item in interesting]
        assert rank == sorted(rank)  # teacher order
        forbidden = set(top[row].tolist()) | set(excluded[row].tolist()) | {0}
        assert not forbidden & set(uninteresting) and len(set(uninteresting)) == 6
    blocked = QueryListSampler(40, top_n=10, k=4, l=6, temperature=3.0, mode="top", block_elements=40 * 7)
    whole = QueryListSampler(40, top_n=10, k=4, l=6, temperature=3.0, mode="top")
    assert blocked.row_block == 7
    assert torch.equal(draw(blocked, 0)[:, :4], draw(whole, 0)[:, :4])


def test_prefix_keys_and_table_find_rows_again():
    from recbole_derrd.distillation.query_lists import PrefixTable, prefix_keys

    users, lengths, targets = torch.tensor([1, 1, 2]), torch.tensor([2, 3, 2]), torch.tensor([5, 6, 5])
    prefixes = torch.tensor([[0, 3, 4], [3, 4, 5], [0, 3, 4]])
    keys = prefix_keys(users, lengths, targets, prefixes)
    assert len(set(keys.tolist())) == 3  # the rows differ in user, length or items
    assert torch.equal(keys, prefix_keys(users, lengths, targets, prefixes))  # same keys in any process
    table = PrefixTable(keys, torch.tensor([[10, 11], [20, 21], [30, 31]]), torch.tensor([[1.], [2.], [3.]]))
    found, position = table.positions(torch.cat([keys[[2, 0]], prefix_keys(users[:1], lengths[:1], targets[1:2],
                                                                            prefixes[:1])]))
    assert found.tolist() == [True, True, False]
    assert table.top[position[:2]].tolist() == [[30, 31], [10, 11]]
    assert table.queries[position[:2]].view(-1).tolist() == [3., 1.]


def test_query_lists_say_when_a_query_has_no_room():
    sampler = QueryListSampler(6, top_n=3, k=2, l=2, temperature=1.0)
    excluded = torch.tensor([[1]])
    with pytest.raises(ValueError, match="rrd_l=2 needs more"):
        sampler.draw(lambda rows: torch.arange(6.).expand(1, -1), torch.arange(1), excluded,
                     torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------- the model
def prepared(model_name, settings):
    from recbole_derrd.teacher import prepare_distillation

    model, train = untrained_model(model_name, settings)
    from recbole.data import create_dataset, data_preparation

    config = model.config
    _, valid, _ = data_preparation(config, create_dataset(config))
    prepare_distillation(model, train, valid)
    return model, train


@pytest.mark.parametrize("cache_mib", [0, 1024])
@pytest.mark.parametrize("exclude_prefix", [False, True])
def test_rrd_lists_are_the_teachers_ranking_for_the_same_prefix(tiny_seq, exclude_prefix, cache_mib):
    model, train = prepared("RRD", dict(tiny_seq, rrd_exclude_prefix_items=exclude_prefix, t_epochs=1,
                                        prefix_cache_mib=cache_mib))
    table = model.context.prefix_table
    assert (table is None) == (cache_mib == 0)
    if table is not None:
        assert table.top.shape == (len(train._dataset.inter_feat), 20)
    model.start_epoch(0)
    batch = first_batch(train)
    if cache_mib:  # a prefix the table lacks is scored on the spot
        batch[model.ITEM_SEQ][0, -1] = (batch[model.ITEM_SEQ][0, -1] % (model.n_items - 1)) + 1
    model.student_adapter.bind(batch)
    model.teacher_adapter.bind(batch)
    term = model.term("RRD")
    distilled_batch = model.batch(batch)
    lists = term.lists_of(distilled_batch.users, distilled_batch)
    with torch.no_grad():
        scores = model.teacher.full_sort_predict(batch).view(len(batch), -1)
    targets, prefixes = batch[model.ITEM_ID], batch[model.ITEM_SEQ]
    for row in range(len(batch)):
        row_scores = scores[row].clone()
        row_scores[0] = -torch.inf
        row_scores[targets[row]] = -torch.inf
        if exclude_prefix:
            row_scores[prefixes[row]] = -torch.inf
        top = torch.topk(row_scores, 20).indices.tolist()
        interesting, uninteresting = lists[row, :5].tolist(), lists[row, 5:].tolist()
        assert [top.index(i) for i in interesting] == sorted(top.index(i) for i in interesting)
        assert int(targets[row]) not in interesting + uninteresting
        assert not set(uninteresting) & set(top)
        if exclude_prefix:
            assert not set(prefixes[row].tolist()) - {0} & set(interesting + uninteresting)
    loss = model.calculate_loss(batch)
    assert len(loss) == 2 and all(torch.isfinite(part) for part in loss)


def test_sequential_de_distils_the_prefix_representation(tiny_seq):
    model, train = prepared("DERRD", dict(tiny_seq, student_model="GRU4Rec", embedding_size=8, hidden_size=8,
                                          t_epochs=1))
    de = model.term("DE")
    assert (de.user_experts.student_dim, de.user_experts.teacher_dim) == (8, 16)
    model.start_epoch(0)
    batch = first_batch(train)
    # the teacher's prefix representations come from the prefix table, equal to its forward
    assert model.context.prefix_table.queries.shape == (len(train._dataset.inter_feat), 16)
    model.teacher_adapter.bind(batch)
    with torch.no_grad():
        own = model.teacher.forward(batch[model.ITEM_SEQ], batch[model.student.ITEM_SEQ_LEN])
    torch.testing.assert_close(model.teacher_adapter.queries(), own)
    base, de_loss, rrd_loss = model.calculate_loss(batch)
    (base + de_loss + rrd_loss).backward()
    assert model.student.item_embedding.weight.grad.abs().sum() > 0
    assert model.teacher.item_embedding.weight.grad is None  # the teacher stays frozen


@pytest.mark.parametrize("teacher, student, method", [("SASRec", "GRU4Rec", "DERRD"), ("BERT4Rec", "SASRec", "RRD"),
                                                      ("SASRec", "SASRec", "DE")])
def test_sequential_pairs_run_end_to_end(tiny_seq, teacher, student, method):
    settings = dict(tiny_seq, teacher_model=teacher, student_model=student, epochs=1, t_epochs=1)
    config = Config(model=method, config_dict=settings)
    assert config["MODEL_TYPE"] == ModelType.SEQUENTIAL and config["MODEL_INPUT_TYPE"] == InputType.POINTWISE
    result = run_recbole(method, config_dict=settings, saved=False)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1


def test_a_sequential_run_takes_recboles_sequential_defaults(workdir, tiny_seq):
    settings = {k: v for k, v in tiny_seq.items() if k not in ("eval_args", "embedding_size", "t_embedding_size")}
    config = Config(model="DERRD", config_dict=dict(settings, student_model="GRU4Rec", teacher_model="GRU4Rec"))
    assert config["eval_args"]["order"] == "TO" and config["eval_args"]["split"] == {"LS": "valid_and_test"}
    assert config["repeatable"] is True
    # the plugin's BPR sizes (embedding_size 20 / 200) do not apply: GRU4Rec keeps its stock 64
    assert config["embedding_size"] == 64 and config["t_embedding_size"] == 64


def test_sequential_refusals_name_the_key_and_the_reason(workdir, tiny_seq):
    with pytest.raises(ValueError, match=r"student_model='SASRec' is sequential but teacher_model='BPR' is general"):
        check_terms_fit("DERRD", DERRD.terms, "SASRec", "BPR")
    with pytest.raises(ValueError, match=r"RD: its RD term ranks or distils per user.*use DE, RRD or DERRD"):
        check_terms_fit("RD", RD.terms, "SASRec", "SASRec")
    with pytest.raises(ValueError, match=r"student_model='FDSA' is refused: FDSA needs item feature fields"):
        Config(model="RRD", config_dict=dict(tiny_seq, student_model="FDSA"))
    with pytest.raises(ValueError, match=r"student_model='SASRecCPR' is refused: SASRecCPR: its predict\(\)"):
        Config(model="RRD", config_dict=dict(tiny_seq, student_model="SASRecCPR"))
    with pytest.raises(ValueError, match=r"train_neg_sample_args=.* must be None when the sequential student's "
                                         r"loss_type is 'CE'"):
        Config(model="RRD", config_dict=dict(tiny_seq, train_neg_sample_args={"distribution": "uniform",
                                                                              "sample_num": 1}))
    with pytest.raises(ValueError, match=r"teacher_model='FPMC' trains with sampled negatives"):
        Config(model="RRD", config_dict=dict(tiny_seq, teacher_model="FPMC"))
    with pytest.raises(ValueError, match=r"rrd_top_n \+ rrd_l = 200 needs that many items"):
        run_recbole("RRD", config_dict=dict(tiny_seq, rrd_top_n=150, rrd_l=50), saved=False)
    with pytest.raises(ValueError, match=r"rrd_max_rows=8 applies to general backbones"):
        run_recbole("RRD", config_dict=dict(tiny_seq, rrd_max_rows=8), saved=False)
    # RecBole writes a None back as a dict of distribution 'none': no negatives either way
    from recbole_derrd.config import samples_negatives

    assert not samples_negatives(None) and not samples_negatives({"distribution": "none", "sample_num": "none"})
    assert samples_negatives({"distribution": "uniform", "sample_num": 1})


def test_a_users_own_sequential_model_is_registered(tiny_seq):
    from recbole.model.sequential_recommender import SASRec

    from recbole_derrd import register_backbone

    class ShortSASRec(SASRec):
        """A user's SASRec subclass."""

    register_backbone(ShortSASRec)
    assert adapter_class("ShortSASRec") is SequentialAdapter  # SASRec's: it inherits SASRec's forward
    # no yaml of its own: the plugin layers SASRec's stock settings (n_heads, loss_type, ...)
    result = run_recbole("DERRD", config_dict=dict(tiny_seq, student_model="ShortSASRec", epochs=1, t_epochs=1),
                         saved=False)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1


# --------------------------------------------------------------------------- around the run
def test_resumed_sequential_run_matches_the_uninterrupted_one(tiny_seq, workdir):
    import glob

    settings = dict(tiny_seq, epochs=4, t_epochs=1, stopping_step=100, eval_step=1)
    straight = run_recbole("DERRD", config_dict=dict(settings, checkpoint_dir=str(workdir / "a"),
                                                     teacher_cache_dir=str(workdir / "teachers")), saved=True)
    short = dict(settings, epochs=2, checkpoint_dir=str(workdir / "b"), teacher_cache_dir=str(workdir / "teachers"))
    run_recbole("DERRD", config_dict=short, saved=True)
    last = glob.glob(str(workdir / "b" / "DERRD-*-last.pth"))[0]
    resumed = run_recbole("DERRD", config_dict=dict(short, epochs=4, resume=last), saved=True)
    assert resumed["best_valid_result"] == straight["best_valid_result"]
    assert resumed["test_result"] == straight["test_result"]


def test_next_items_from_a_history_match_the_models_ranking(tiny_seq):
    from recbole_derrd.quick_start import load_data_and_model
    from recbole_derrd.serving.inference import recommend, recommend_next, user_histories
    from recbole_derrd.serving.export import export_student

    result = run_recbole("RRD", config_dict=dict(tiny_seq, epochs=1, t_epochs=1), saved=True)
    _, model, _, train, _, test = load_data_and_model(result["saved_model_file"])
    model.eval()
    batch = test._dataset.inter_feat[:12]  # a test row: the whole history before its test item
    lengths = batch[model.student.ITEM_SEQ_LEN]
    histories = [batch[model.ITEM_SEQ][row, :lengths[row]].tolist() for row in range(12)]
    scores, items = recommend_next(model, histories, k=5)
    with torch.no_grad():
        own = model.full_sort_predict(batch).view(12, -1)
    own[:, 0] = -torch.inf
    torch.testing.assert_close(scores, torch.topk(own, 5, dim=1).values, rtol=1e-4, atol=1e-5)
    _, without = recommend_next(model, histories, k=5, exclude_history=True)
    assert all(not set(without[row].tolist()) & set(histories[row]) for row in range(12))
    # a user's training sequence, as the dataset holds it, ends with its last training target
    user = int(train._dataset.inter_feat[model.USER_ID][0])
    (history,) = user_histories(train._dataset, [user])
    rows = train._dataset.inter_feat[model.USER_ID] == user
    assert history[-1] == int(train._dataset.inter_feat[model.ITEM_ID][rows][-1])
    with pytest.raises(TypeError, match="use recommend_next"):
        recommend(model, [1, 2])
    # the student exports as a stock SASRec
    paths = export_student(result["saved_model_file"], str(tiny_seq["checkpoint_dir"] + "/exported"))
    state = torch.load(paths["weights"], weights_only=True)
    assert set(state) == set(model.student.state_dict())


def test_run_script_keeps_recboles_sequential_protocol_for_a_sequential_student(monkeypatch):
    import sys

    from conftest import ROOT

    monkeypatch.syspath_prepend(ROOT)
    from run_recbole_derrd import sequential_student

    assert sequential_student(["--model=RRD", "--student_model=GRU4Rec"])
    assert not sequential_student(["--student_model=BPR"]) and not sequential_student([])
    assert "run_recbole_derrd" in sys.modules


def test_the_teacher_cache_key_covers_the_prefix_settings(tiny_seq):
    from recbole_derrd.config import teacher_config
    from recbole_derrd.teacher import cache_description, cache_key

    def key(**changes):
        return cache_key(cache_description(teacher_config(Config(model="RRD", config_dict=dict(tiny_seq, **changes))),
                                           {}))

    assert key() == key()
    assert key() != key(MAX_ITEM_LIST_LENGTH=5)
    assert key() != key(t_hidden_size=32)
    assert key() == key(hidden_size=4)  # the student's size does not shape the teacher
