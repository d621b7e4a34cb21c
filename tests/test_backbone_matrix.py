"""Every RecBole 1.2.1 general recommender, as teacher (BPR student) and as student (BPR
teacher), and every sequential recommender (SASRec on the other side, RecBole's sequential
protocol), one short run each through the real pipeline with every term it supports combined
(DE-RRD, or RRD when a side only scores); teachers are cached and shared across the runs.
Each works, or is refused at start-up with its reason (``backbone_support.student_refusal`` and
``teacher_refusal``).  The per-term matrix is
``python -m recbole_derrd.harness.support_matrix`` (docs/backbones.md)."""

import sys

import pytest

from recbole_derrd.backbone_support import (backbone_class, general_models, sequential_models, student_refusal,
                                            teacher_refusal)
from recbole_derrd.harness import support_matrix


@pytest.fixture(scope="module")
def matrix_settings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("matrix")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)  # RecBole writes ./log and ./saved here
        patch.setattr(sys, "argv", ["pytest"])  # RecBole's Config reads --key=value from argv
        yield (support_matrix.tiny_settings(str(folder)), support_matrix.tiny_sequential_settings(str(folder)))


@pytest.mark.parametrize("role", support_matrix.ROLES)
@pytest.mark.parametrize("name", general_models() + sequential_models())
def test_model_in_role(matrix_settings, name, role):
    cells = support_matrix.cells_of(name, role, support_matrix.settings_for(name, *matrix_settings), None)
    (method, cell), = cells.items()
    model_class = backbone_class(name)
    expected = student_refusal(model_class) if role == "student" else teacher_refusal(model_class)
    if expected:
        assert cell["status"] == "refused" and expected in cell["detail"], cell
    else:
        assert cell["status"] == "ok", cell
        partner = support_matrix.partner_of(name)
        assert method == support_matrix.combined_method(*((name, partner) if role == "teacher" else (partner, name)))
