"""HTD, hierarchical topology distillation: the topology losses against hand computations, the
groups from the selection network, the term's loss assembled by hand, and a run through RecBole."""

import logging
import math
import re

import pytest
import torch
from recbole.config import Config

import recbole_derrd
from recbole_derrd.distillation.topology import (cosine_matrix, entity_topology_loss, group_prototypes,
                                                 group_topology_loss, hierarchical_topology_loss)
from recbole_derrd.quick_start import run_recbole

from conftest import prepared_model

SMALL_HTD = {"htd_num_groups": 3}


def cos(a, b):
    return float(torch.dot(a, b) / (a.norm() * b.norm()))


# --------------------------------------------------------------------------- by hand
# three entities in two groups: 0 and 1 together, 2 alone; 2-d student, 3-d teacher
STUDENT = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
TEACHER = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, 1.0, 0.0]])
GROUPS = torch.tensor([0, 0, 1])


def test_entity_level_compares_same_group_pairs_only():
    # group 0: pair (0, 1): student cos 1/sqrt(2), teacher cos 0 (not positive: dropped by default);
    # the self-pairs have cos 1 on both sides; group 1 is one entity
    assert entity_topology_loss(STUDENT, TEACHER, GROUPS).item() == pytest.approx(0.0)
    every_pair = entity_topology_loss(STUDENT, TEACHER, GROUPS, positive_only=False).item()
    assert every_pair == pytest.approx(2 * (1 / math.sqrt(2) - 0) ** 2)  # (0, 1) and (1, 0)
    # a positive teacher similarity counts
    teacher = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0], [-1.0, 1.0, 0.0]])
    expected = 2 * (1 / math.sqrt(2) - 1 / math.sqrt(3)) ** 2
    assert entity_topology_loss(STUDENT, teacher, GROUPS).item() == pytest.approx(expected)


def test_entity_level_matches_the_pair_by_pair_definition_for_interleaved_groups():
    """Groups in any order, of any size (singletons too): value and gradient equal the plain
    double sum over same-group pairs (i, j), i != j and i == j alike."""
    generator = torch.Generator().manual_seed(3)
    student = torch.randn(12, 4, generator=generator)
    teacher = torch.randn(12, 6, generator=generator)
    groups = torch.tensor([2, 0, 2, 5, 0, 2, 1, 0, 2, 5, 7, 2])  # 1 and 7 alone

    for positive_only in (True, False):
        fast = student.clone().requires_grad_(True)
        entity_topology_loss(fast, teacher, groups, positive_only).backward()
        plain = student.clone().requires_grad_(True)
        total = plain.new_zeros(())
        for i in range(12):
            for j in range(12):
                if groups[i] != groups[j]:
                    continue
                target = cos(teacher[i], teacher[j])
                if positive_only and target <= 0:
                    continue
                total = total + (torch.dot(plain[i], plain[j]) / (plain[i].norm() * plain[j].norm()) - target) ** 2
        total.backward()
        assert total.item() > 0.1
        torch.testing.assert_close(entity_topology_loss(student, teacher, groups, positive_only), total.detach())
        torch.testing.assert_close(fast.grad, plain.grad)


def test_group_level_relates_every_entity_to_every_prototype():
    student_protos = [(STUDENT[0] + STUDENT[1]) / 2, STUDENT[2]]
    teacher_protos = [(TEACHER[0] + TEACHER[1]) / 2, TEACHER[2]]
    expected = sum((cos(student_protos[g], STUDENT[i]) - cos(teacher_protos[g], TEACHER[i])) ** 2
                   for g in range(2) for i in range(3))
    assert group_topology_loss(STUDENT, TEACHER, GROUPS).item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(group_prototypes(TEACHER, GROUPS, torch.tensor([0, 1])),
                               torch.stack(teacher_protos))
    total = hierarchical_topology_loss(STUDENT, TEACHER, GROUPS, positive_only=False).item()
    assert total == pytest.approx(expected + 2 * (1 / math.sqrt(2)) ** 2, rel=1e-6)


def test_the_prototypes_carry_no_gradient():
    student = STUDENT.clone().requires_grad_(True)
    group_topology_loss(student, TEACHER, GROUPS).backward()
    # by hand: d/ds_i of sum_g (cos(P_g, s_i) - c_gi)^2 with P fixed
    by_hand = torch.zeros_like(STUDENT)
    protos = [(STUDENT[0] + STUDENT[1]) / 2, STUDENT[2]]
    teacher_protos = [(TEACHER[0] + TEACHER[1]) / 2, TEACHER[2]]
    for i in range(3):
        s = STUDENT[i].clone().requires_grad_(True)
        loss = sum((torch.dot(p, s) / (p.norm() * s.norm()) - cos(tp, TEACHER[i])) ** 2
                   for p, tp in zip(protos, teacher_protos))
        loss.backward()
        by_hand[i] = s.grad
    torch.testing.assert_close(student.grad, by_hand)


def test_cosine_matrix_and_perfect_students():
    torch.testing.assert_close(cosine_matrix(STUDENT, STUDENT).diagonal(), torch.ones(3))
    # a student whose representations are a rotation and scaling of the teacher's has its topology
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(0)))[0]
    assert hierarchical_topology_loss(2 * TEACHER @ rotation, TEACHER, GROUPS).item() < 1e-10


# --------------------------------------------------------------------------- the term
def build(settings):
    return prepared_model("HTD", settings)


def expected_topology(net, term, batch):
    """(users, items, groups, topology) of a batch computed by hand from the term's parts."""
    users = batch.users
    items = torch.unique(torch.cat([batch.positives, batch.negatives]))
    student, teacher = net.student_adapter, net.teacher_adapter
    with torch.no_grad():
        t_users, t_items = teacher.user_repr(users), teacher.item_repr(items)
        groups = torch.cat([term.user_experts.selection(t_users).argmax(-1),
                            term.item_experts.selection(t_items).argmax(-1) + term.num_groups])
        topology = hierarchical_topology_loss(torch.cat([student.user_repr(users), student.item_repr(items)]),
                                              torch.cat([t_users, t_items]), groups)
    return users, items, groups, topology


def test_the_term_assembles_group_assignment_and_topology(tiny):
    config, net, train = build(dict(tiny, **SMALL_HTD))
    term = net.term("HTD")
    assert term.tau == 1.0 and term.alpha == 0.5 and term.num_groups == 3
    interaction = next(iter(train))
    batch = net.batch(interaction)
    users, items, groups, topology = expected_topology(net, term, batch)
    student, teacher = net.student_adapter, net.teacher_adapter
    with torch.no_grad():
        t_users, t_items = teacher.user_repr(users), teacher.item_repr(items)
    torch.manual_seed(7)  # the Gumbel noise of the group assignment
    with torch.no_grad():
        assignment = (term.user_experts.loss(student.user_repr(users), t_users, term.tau)
                      + term.item_experts.loss(student.item_repr(items), t_items, term.tau))
        torch.manual_seed(7)
        loss = term.raw_loss(batch)
    torch.testing.assert_close(loss, 0.5 * topology + 0.5 * assignment)
    assert groups[:len(users)].max() < 3 <= groups[len(users):].min()
    # the temperature anneals geometrically over htd_anneal_epochs
    net.start_epoch(50)
    assert term.tau == pytest.approx(1e-5)


def test_epoch_rows_move_the_group_assignment_to_the_rotation(tiny):
    """htd_rows: epoch -- GA on the rotation's next users and items, each side weighted by the
    batch's distinct rows / rows used; the groups and the topology stay the batch's."""
    from recbole_derrd.terms.rows import Rotation, stream_seed

    config, net, train = build(dict(tiny, htd_rows="epoch", **SMALL_HTD))
    term = net.term("HTD")
    interaction = next(iter(train))
    batch = net.batch(interaction)
    users, items, _, topology = expected_topology(net, term, batch)
    student, teacher = net.student_adapter, net.teacher_adapter
    generator = torch.Generator().manual_seed(stream_seed("htd-rows", config["seed"], 0))
    shares = (term.slices.batches, 0, 1)
    rotated_users = Rotation(term.n_users, generator, *shares).next(users.device)
    rotated_items = Rotation(term.n_items, generator, *shares).next(users.device)
    assert term.slices.batches == len(train) > 1 and 0 < len(rotated_users) < term.n_users
    with torch.no_grad():
        torch.manual_seed(7)  # the Gumbel noise, users' first
        assignment = (term.user_experts.loss(student.user_repr(rotated_users), teacher.user_repr(rotated_users),
                                             term.tau) * (len(users) / len(rotated_users))
                      + term.item_experts.loss(student.item_repr(rotated_items), teacher.item_repr(rotated_items),
                                               term.tau) * (len(items) / len(rotated_items)))
        torch.manual_seed(7)
        loss = term.raw_loss(batch)
    torch.testing.assert_close(loss, 0.5 * topology + 0.5 * assignment)


def test_epoch_rows_cover_every_entity_once_and_survive_a_resume(tiny):
    config, net, train = build(dict(tiny, htd_rows="epoch", **SMALL_HTD))
    term = net.term("HTD")

    def epoch_rows(epoch):
        net.start_epoch(epoch)
        return [torch.cat([rotation.next(torch.device("cpu")) for _ in range(term.slices.batches)])
                for rotation in (term._user_rotation, term._item_rotation)]

    first_users, first_items = epoch_rows(3)
    assert sorted(first_users.tolist()) == list(range(1, term.n_users))  # 0 is RecBole's padding
    assert sorted(first_items.tolist()) == list(range(1, term.n_items))
    again_users, again_items = epoch_rows(3)  # a resumed epoch draws the same rows
    assert torch.equal(first_users, again_users) and torch.equal(first_items, again_items)
    assert not torch.equal(epoch_rows(4)[0], first_users)
    with pytest.raises(ValueError, match="htd_rows"):
        build(dict(tiny, htd_rows="all", **SMALL_HTD))


def test_the_epoch_summary_counts_the_groups_of_the_epochs_batches(tiny):
    config, net, train = build(dict(tiny, **SMALL_HTD))
    term = net.term("HTD")
    assert net.epoch_summary() == ""  # nothing trained yet
    sizes, pair_share = torch.zeros(6), 0.0
    for interaction in list(train)[:2]:
        batch = net.batch(interaction)
        groups = expected_topology(net, term, batch)[2]
        with torch.no_grad():
            term.raw_loss(batch)
        batch_sizes = torch.bincount(groups, minlength=6).float()
        sizes += batch_sizes
        pair_share += float((batch_sizes ** 2).sum() / batch_sizes.sum() ** 2) / 2
    users, items = sizes[:3], sizes[3:]
    expected = "HTD groups: users %d/3 (largest %.0f%%), items %d/3 (largest %.0f%%), same-group pairs %.1f%%" % (
        (users > 0).sum(), 100 * users.max() / users.sum(), (items > 0).sum(), 100 * items.max() / items.sum(),
        100 * pair_share)
    assert net.epoch_summary() == expected
    net.start_epoch(1)  # a new epoch starts counting afresh
    assert net.epoch_summary() == ""


def test_htd_trains_through_recbole_and_checks_its_keys(tiny, caplog):
    caplog.set_level(logging.INFO)
    result = run_recbole("HTD", config_dict=dict(tiny, state="INFO", epochs=3, **SMALL_HTD), saved=True)
    assert 0 <= result["test_result"]["ndcg@10"] <= 1
    messages = [re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()) for record in caplog.records]
    training_lines = [text for text in messages if text.startswith("epoch ") and "HTD loss" in text]
    assert len(training_lines) == 3 and all("HTD groups: users " in line for line in training_lines)
    assert recbole_derrd.HTD.terms[0].name == "HTD"
    with pytest.raises(ValueError, match=r"htd_alpha=1.5 must be in \[0, 1\]"):
        build(dict(tiny, htd_alpha=1.5))
    with pytest.raises(ValueError, match="htd_tau_end=2 must not exceed htd_tau_start=1.0"):
        build(dict(tiny, htd_tau_end=2))
    with pytest.raises(ValueError, match="htd_num_groups=0 must be a positive integer"):
        build(dict(tiny, htd_num_groups=0))


def test_htd_needs_representations_on_both_sides(tiny):
    with pytest.raises(ValueError, match="HTD: its HTD term distils user and item representations, but "
                                         "teacher_model='EASE' only scores"):
        Config(model="HTD", config_dict=dict(tiny, teacher_model="EASE"))


def test_the_group_use_script_reads_the_summaries_of_an_htd_log(tmp_path):
    """results/citeulike/htd_group_use.py: settings from the log's config dump, one row per
    sampled epoch and the last, colour codes stripped; a log without HTD lines is refused."""
    import os
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "results", "citeulike", "htd_group_use.py")
    green, blue, end = "\x1b[1;32m", "\x1b[1;34m", "\x1b[0m"
    lines = ["\x1b[1;36mhtd_weight\x1b[0m =\x1b[1;33m 0.001\x1b[0m", "htd_alpha = 0.9"]
    for epoch, groups in [(0, 30), (1, 12), (2, 3)]:
        lines.append("04 Dec 06:00    INFO  %sepoch %d training%s [%stime%s: 5.%ds, %sbase loss%s: 3.0, %sHTD loss%s: "
                     "0.12%d] HTD groups: users %d/30 (largest 50%%), items 4/30 (largest 40%%), same-group pairs 9.5%%"
                     % (green, epoch, end, blue, end, epoch, blue, end, blue, end, epoch, groups))
    log = tmp_path / "HTD-run.log"
    log.write_text("\n".join(lines) + "\n")
    out = subprocess.run([sys.executable, script, str(log), "--every", "2"], capture_output=True, text=True, check=True)
    assert "### htd_weight 0.001, htd_alpha 0.9, htd_num_groups ?" in out.stdout
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == ["| 0 | 5.0 | 0.1200 | users 30/30 (largest 50%), items 4/30 (largest 40%), same-group pairs 9.5% |",
                    "| 2 | 5.2 | 0.1220 | users 3/30 (largest 50%), items 4/30 (largest 40%), same-group pairs 9.5% |"]
    (tmp_path / "other.log").write_text("epoch 0 training [time: 1.0s, train loss: 2.0]\n")
    refused = subprocess.run([sys.executable, script, str(tmp_path / "other.log")], capture_output=True, text=True)
    assert refused.returncode != 0 and "no HTD training lines" in refused.stderr
    missing = subprocess.run([sys.executable, script, str(tmp_path / "none.log")], capture_output=True, text=True)
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1 and "none.log: cannot read it" in missing.stderr
