"""Adapters over RecBole's general recommenders: their scores are the models' own, their
representations have the promised shapes, and the role checks refuse with the reason."""

import pytest
import torch
import torch.nn.functional as F
from recbole.config import Config
from recbole.data.interaction import Interaction
from recbole.model.general_recommender import BPR
from recbole.utils import get_model

from recbole_derrd import register_backbone
from recbole_derrd.backbone_support import (backbone_class, check_backbone, check_terms_fit, general_models,
                                            representation_models, sequential_models, student_refusal)
from recbole_derrd.backbones import (ENMFAdapter, MFAdapter, PairScoreAdapter, PropagatedAdapter, SimpleXAdapter,
                                     ScoreOnlyAdapter, SGLAdapter, adapter_for)
from recbole_derrd.model import DERRD, RRD
from recbole_derrd.quick_start import run_recbole

from conftest import untrained_model

#: general recommenders whose score is a dot product of two tables (DE distils the tables)
TABLE_MODELS = {"BPR": MFAdapter, "LINE": MFAdapter, "ENMF": ENMFAdapter, "LightGCN": PropagatedAdapter,
                "NGCF": PropagatedAdapter, "SpectralCF": PropagatedAdapter, "DGCF": PropagatedAdapter,
                "NCL": PropagatedAdapter, "SGL": SGLAdapter, "SimpleX": SimpleXAdapter}
#: score-only models checked against their own predict (catalogue rows gathered, or pairs)
SCORE_MODELS = {"EASE": ScoreOnlyAdapter, "ItemKNN": ScoreOnlyAdapter, "Pop": ScoreOnlyAdapter,
                "MultiVAE": ScoreOnlyAdapter, "NCEPLRec": ScoreOnlyAdapter, "DMF": PairScoreAdapter,
                "NNCF": PairScoreAdapter}


def stock(name, tiny):
    model, train = untrained_model(name, dict(tiny, model=name))
    return model.eval(), train


def own_scores(model, users, items):
    """[U, X] scores of the pairs by the model's own predict."""
    flat_users = users.unsqueeze(1).expand_as(items).reshape(-1)
    interaction = Interaction({model.USER_ID: flat_users, model.ITEM_ID: items.reshape(-1)})
    return model.predict(interaction).float().view(items.shape)


def pairs(model, n_users=4, n_items=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    users = torch.randperm(model.n_users - 1, generator=generator)[:n_users] + 1
    items = torch.randint(1, model.n_items, (n_users, n_items), generator=generator)
    return users, items


@pytest.mark.parametrize("name", sorted(TABLE_MODELS))
def test_table_adapters_score_like_the_model_and_give_representations(name, tiny):
    model, _ = stock(name, tiny)
    adapter = adapter_for(model)
    assert type(adapter) is TABLE_MODELS[name] and adapter.has_representations
    users, items = pairs(model)
    with torch.no_grad():
        torch.testing.assert_close(adapter.score(users, items), own_scores(model, users, items),
                                   rtol=1e-4, atol=1e-5)
        full = model.full_sort_predict(Interaction({model.USER_ID: users})).view(len(users), -1)
        torch.testing.assert_close(adapter.all_scores(users), full, rtol=1e-4, atol=1e-5)
        user_table, item_table = adapter.score_tables()
        assert adapter.user_repr(users).shape == (len(users), adapter.user_dim)
        assert adapter.item_repr(items[0]).shape == (items.shape[1], adapter.item_dim)
        # the tables are the representations, and their dot products the scores
        torch.testing.assert_close(adapter.user_repr(users), user_table[users])
        expected = (user_table[users].unsqueeze(1) * item_table[items]).sum(-1)
        torch.testing.assert_close(adapter.score(users, items), expected, rtol=1e-4, atol=1e-5)
        item_side = adapter.item_side_score(items[:, 0], users.unsqueeze(0).expand(len(users), -1))
        torch.testing.assert_close(item_side, (item_table[items[:, 0]] @ user_table[users].t()),
                                   rtol=1e-4, atol=1e-5)


def test_simplex_representations_are_its_normalised_user_mix_and_items(tiny):
    """By hand: u' = gamma u + (1 - gamma) W mean(history items), scores cos(u', i)."""
    model, _ = stock("SimpleX", tiny)
    adapter = adapter_for(model)
    users, items = torch.tensor([1, 2]), torch.tensor([[3, 4], [5, 6]])
    expected = []
    for user, row in zip(users, items):
        length = int(model.history_item_len[user])
        history = model.item_emb.weight[model.history_item_id[user, :length]]
        mixed = model.gamma * model.user_emb.weight[user] + (1 - model.gamma) * model.UI_map(history.mean(0))
        expected.append(torch.stack([F.cosine_similarity(mixed, model.item_emb.weight[i], dim=0) for i in row]))
    with torch.no_grad():
        torch.testing.assert_close(adapter.score(users, items), torch.stack(expected), rtol=1e-5, atol=1e-6)
        assert torch.allclose(adapter.user_repr(users).norm(dim=1), torch.ones(2))
    # gradients reach the embeddings the student learns (the user's and its history's items)
    model.train()
    adapter.begin_step()
    adapter.score(users, items).sum().backward()
    assert model.user_emb.weight.grad[1].abs().sum() > 0 and model.UI_map.weight.grad.abs().sum() > 0
    assert model.item_emb.weight.grad[model.history_item_id[1, 0]].abs().sum() > 0


def test_enmf_tables_fold_its_weight_vector_into_the_items(tiny):
    model, _ = stock("ENMF", tiny)
    users, items = torch.tensor([1, 2]), torch.tensor([[3, 4], [5, 6]])
    u, i, h = model.user_embedding.weight, model.item_embedding.weight, model.H_i.weight[0]
    by_hand = torch.stack([torch.stack([(u[a] * i[b] * h).sum() for b in row]) for a, row in zip(users, items)])
    with torch.no_grad():
        torch.testing.assert_close(adapter_for(model).score(users, items), by_hand, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(SCORE_MODELS))
def test_score_only_adapters_score_like_the_model(name, tiny):
    model, train = stock(name, tiny)
    if name == "Pop":  # Pop counts the items of the batches it is trained on
        model.calculate_loss(next(iter(train)))
    adapter = adapter_for(model)
    assert type(adapter) is SCORE_MODELS[name] and not adapter.has_representations
    users, items = pairs(model)
    with torch.no_grad():
        torch.testing.assert_close(adapter.score(users, items), own_scores(model, users, items),
                                   rtol=1e-4, atol=1e-5)
        assert adapter.all_scores(users).shape == (len(users), model.n_items)
        torch.testing.assert_close(adapter.all_scores(users).gather(1, items), own_scores(model, users, items),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(TypeError, match="has no user representation"):
        adapter.user_repr(users)


def test_pairwise_fallback_for_models_without_full_sort_predict(tiny):
    model, _ = stock("NNCF", tiny)  # RecBole's NNCF ranks pairs only
    adapter = adapter_for(model)
    adapter.PAIRS_PER_PASS = 3 * model.n_items  # several blocks of users
    users = torch.arange(1, 8)
    all_items = torch.arange(model.n_items).expand(len(users), -1)
    with torch.no_grad():
        torch.testing.assert_close(adapter.all_scores(users), own_scores(model, users, all_items))


def test_every_general_model_is_served_or_refused_with_a_reason():
    names = general_models()
    assert len(names) == 33 and len(sequential_models()) == 31
    for name in names:
        cls = backbone_class(name)
        assert get_model(name) is cls
        reason = student_refusal(cls)
        assert reason is None or name in reason
    refused = sorted(n for n in names if student_refusal(backbone_class(n)))
    assert refused == ["ADMMSLIM", "AsymKNN", "DiffRec", "EASE", "ItemKNN", "LDiffRec", "NCEPLRec", "NCL",
                       "Pop", "RaCT", "Random", "RecVAE", "SLIMElastic"]
    assert set(TABLE_MODELS) | {"NeuMF"} == {n for n in representation_models() if n in names}


def test_role_and_term_checks_name_the_key_and_the_reason():
    with pytest.raises(ValueError, match=r"student_model='EASE' is refused: EASE is fitted without gradient"):
        check_backbone("EASE", "student_model")
    assert check_backbone("EASE", "teacher_model").__name__ == "EASE"
    with pytest.raises(ValueError, match=r"student_model='RecVAE' is refused: RecVAE trains with RecBole's own "
                                         r"RecVAETrainer"):
        check_backbone("RecVAE", "student_model")
    with pytest.raises(ValueError, match=r"student_model='DiffRec' is refused: DiffRec reads whole user rows"):
        check_backbone("DiffRec", "student_model")
    with pytest.raises(ValueError, match=r"teacher_model='DeepFM' is a context aware recommender model"):
        check_backbone("DeepFM", "teacher_model")
    assert check_backbone("SASRec", "teacher_model").__name__ == "SASRec"  # tests/test_sequential.py
    with pytest.raises(ValueError, match=r"teacher_model='RaCT' is refused: RaCT trains in stages"):
        check_backbone("RaCT", "teacher_model")
    assert check_backbone("RaCT", "teacher_model", checkpoint_given=True).__name__ == "RaCT"
    with pytest.raises(ValueError, match=r"student_model=None must name"):
        check_backbone(None, "student_model")
    check_terms_fit("RRD", RRD.terms, "BPR", "EASE")  # ranking terms: scores are enough
    check_terms_fit("DERRD", DERRD.terms, "NGCF", "LightGCN")
    with pytest.raises(ValueError, match=r"DERRD: its DE term .* student_model='MultiVAE' only scores"):
        check_terms_fit("DERRD", DERRD.terms, "MultiVAE", "BPR")


class WarmBPR(BPR):
    """A user's own model: BPR with its item embeddings started from a small constant."""

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        torch.nn.init.constant_(self.item_embedding.weight, 0.01)


def test_a_users_own_model_is_registered_and_distilled(tiny):
    assert register_backbone(WarmBPR) is WarmBPR
    assert get_model("WarmBPR") is WarmBPR and backbone_class("WarmBPR") is WarmBPR
    model, _ = untrained_model("WarmBPR", dict(tiny, model="WarmBPR", embedding_size=8))
    assert type(adapter_for(model)) is MFAdapter  # BPR's adapter: the embeddings keep their names
    result = run_recbole("DERRD", config_dict=dict(tiny, student_model="WarmBPR", epochs=1), saved=False)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    with pytest.raises(ValueError, match="name of RecBole's own model"):
        register_backbone(type("BPR", (BPR,), {}))
    with pytest.raises(TypeError, match="GeneralRecommender or SequentialRecommender subclass"):
        register_backbone(dict)


@pytest.mark.parametrize("teacher, student, model", [("EASE", "BPR", "RRD"), ("ItemKNN", "BPR", "CD"),
                                                     ("NGCF", "LightGCN", "DERRD"), ("BPR", "MultiVAE", "RRD"),
                                                     ("SimpleX", "BPR", "DERRD"), ("BPR", "SimpleX", "DERRD")])
def test_new_pairs_train_end_to_end(tiny, teacher, student, model):
    config = Config(model=model, config_dict=dict(tiny, teacher_model=teacher, student_model=student))
    assert config["teacher_model"] == teacher
    result = run_recbole(model, config_dict=dict(tiny, teacher_model=teacher, student_model=student, epochs=1),
                         saved=False)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1


def test_model_size_counts_what_a_model_scores_with(tiny):
    from recbole_derrd.backbone_support import model_size

    bpr, _ = stock("BPR", tiny)
    assert model_size(bpr) == (bpr.n_users + bpr.n_items) * 8
    ease, _ = stock("EASE", tiny)
    assert model_size(ease) == 1 + ease.n_items ** 2  # its dummy parameter + the item-item weights
    knn, _ = stock("ItemKNN", tiny)
    assert model_size(knn) == 1 + knn.w.nnz  # the sparse similarities, not the cached predictions


def test_a_new_backbone_student_exports_as_its_stock_model(tiny, workdir):
    from recbole_derrd.quick_start import load_data_and_model
    from recbole_derrd.serving.export import export_student

    result = run_recbole("RRD", config_dict=dict(tiny, student_model="NGCF", epochs=1), saved=True)
    paths = export_student(result["saved_model_file"], str(workdir / "exported"))
    state = torch.load(paths["weights"], weights_only=True)
    _, distilled, _, _, _, _ = load_data_and_model(result["saved_model_file"])
    stock_model, _ = untrained_model("NGCF", dict(tiny, model="NGCF"))
    assert set(state) == set(stock_model.state_dict())
    stock_model.load_state_dict(state)
    stock_model.eval()
    distilled.eval()
    users = Interaction({"user_id": torch.arange(1, 10)})
    with torch.no_grad():
        torch.testing.assert_close(stock_model.full_sort_predict(users), distilled.full_sort_predict(users))


def test_a_closed_form_teacher_is_saved_whatever_eval_step(tiny, caplog):
    """ItemKNN trains one epoch; with eval_step 5 RecBole would never validate nor save it.
    Its one evaluation shows no trend, so its cap is not reported as binding."""
    result = run_recbole("RRD", config_dict=dict(tiny, teacher_model="ItemKNN", eval_step=5, epochs=1), saved=False)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    assert "ItemKNN ended at its epoch cap" not in caplog.text


def test_side_by_side_sizes_a_closed_form_teacher_by_its_weights(tiny):
    """EASE's one trainable number is RecBole's placeholder; its size is the item-item matrix."""
    from recbole_derrd.harness.side_by_side import run_side_by_side

    report = run_side_by_side("RRD", config_dict=dict(tiny, teacher_model="EASE", epochs=1), saved=False)
    ease, _ = stock("EASE", tiny)
    teacher_row, student_row = report["rows"][0], report["rows"][1]
    assert teacher_row["model"].startswith("Teacher (EASE")
    assert teacher_row["parameters"] == 1 + ease.n_items ** 2
    assert student_row["parameters"] == (ease.n_users + ease.n_items) * 8
