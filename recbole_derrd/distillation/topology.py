"""Topology losses of hierarchical topology distillation (HTD; Kang et al., KDD 2021).

The student learns the *relations* of the teacher's representation space, not the points:
cosine similarities compared between the two spaces, so the two sizes never have to match.
HTD splits the full topology (every pair of entities) in two, because a small student cannot
hold all of it:

* **entity level**: the pairs of entities in the same group (groups: the teacher's group
  assignment, one group id per entity);
* **group level**: every entity against every group's prototype (the mean representation of the
  group's entities in the batch), the prototypes held fixed (no gradient through them).

Both are sums of squared differences of cosine similarities.  No RecBole, no config keys here
(the term in :mod:`recbole_derrd.terms.htd` reads them).
"""

import torch
import torch.nn.functional as F


def cosine_matrix(a, b):
    """[n, d] and [m, d'] with d == d' -> [n, m] cosine similarities."""
    return F.normalize(a, dim=1) @ F.normalize(b, dim=1).t()


def group_prototypes(vectors, groups, present):
    """[n, d] vectors, [n] group ids, [G] ids present -> [G, d] mean vector of each group."""
    slots = torch.searchsorted(present, groups)
    sums = vectors.new_zeros(len(present), vectors.shape[1]).index_add_(0, slots, vectors)
    counts = torch.bincount(slots, minlength=len(present)).to(vectors.dtype)
    return sums / counts.unsqueeze(1)


def entity_topology_loss(student, teacher, groups, positive_only=True):
    """sum over groups g and pairs (i, j) of g of (cos_s(i, j) - cos_t(i, j))^2.

    ``positive_only``: only the pairs whose teacher similarity is positive count, as in the
    authors' code (it selects the pairs through ``similarity * same_group > 0``; the pairs of one
    group with a negative teacher similarity drop out with the other groups' pairs).  Computed
    group by group: memory is the largest group's square, not the batch's.  The rows are sorted
    by group and normalised once, so that each group is a contiguous slice (a view): a few
    products per group, and no per-group gather whose backward fills a batch-sized gradient.
    """
    order = torch.argsort(groups, stable=True)
    counts = torch.unique_consecutive(groups[order], return_counts=True)[1].tolist()
    student_rows = F.normalize(student[order], dim=1)
    with torch.no_grad():
        teacher_rows = F.normalize(teacher[order], dim=1)
    loss = student.new_zeros(())
    for s_group, t_group in zip(student_rows.split(counts), teacher_rows.split(counts)):
        if len(s_group) < 2:
            continue  # a lone entity's only pair is itself: similarity 1 on both sides
        with torch.no_grad():
            target = t_group @ t_group.t()
        gap = (s_group @ s_group.t() - target).pow(2)
        loss = loss + ((gap * (target > 0)).sum() if positive_only else gap.sum())
    return loss


def group_topology_loss(student, teacher, groups):
    """sum over present groups g and all entities i of (cos(P_s(g), s_i) - cos(P_t(g), t_i))^2,
    with P the group prototypes of each space, held fixed (the gradient reaches s_i only)."""
    present = torch.unique(groups)
    with torch.no_grad():
        student_prototypes = group_prototypes(student, groups, present)
        target = cosine_matrix(group_prototypes(teacher, groups, present), teacher)
    return (cosine_matrix(student_prototypes, student) - target).pow(2).sum()


def hierarchical_topology_loss(student, teacher, groups, positive_only=True):
    """Entity-level + group-level topology loss of one set of entities (see the module)."""
    return (entity_topology_loss(student, teacher, groups, positive_only)
            + group_topology_loss(student, teacher, groups))
