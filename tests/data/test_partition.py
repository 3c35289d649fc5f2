"""Partitions: disjoint and covering, sizes, label skew, determinism, errors."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from nettrain.data import PARTITIONS, label_histogram, partition
from nettrain.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    """Unbalanced labels of 10 classes (60..105 samples each), in random order."""
    rng = np.random.default_rng(123)
    y = np.repeat(np.arange(10), 60 + 5 * np.arange(10))
    return torch.from_numpy(rng.permutation(y))


@pytest.fixture(scope="module")
def groups(labels: torch.Tensor) -> torch.Tensor:
    """Skewed group ids for the labels: 40 writers, the most prolific ~10x the least."""
    rng = np.random.default_rng(7)
    weights = 1.0 / np.arange(1, 41) ** 0.6
    return torch.from_numpy(rng.choice(40, size=len(labels), p=weights / weights.sum()))


def options(scheme: str, groups: torch.Tensor) -> dict:
    """Keyword arguments a scheme needs beyond the labels: group ids for ``groups``."""
    return {"groups": groups} if scheme == "groups" else {}


def check_cover(parts: list[torch.Tensor], n: int, n_agents: int) -> None:
    """Parts are sorted int64, non-empty, pairwise disjoint, and cover 0..n-1."""
    assert len(parts) == n_agents
    for p in parts:
        assert p.dtype == torch.int64
        assert p.numel() > 0
        assert torch.equal(p, torch.sort(p).values)
    joined = torch.cat(parts)
    assert joined.numel() == n  # with the equality below: disjoint
    assert torch.equal(torch.sort(joined).values, torch.arange(n))


@pytest.mark.parametrize("scheme", PARTITIONS)
@pytest.mark.parametrize("n_agents", [1, 7, 16])
def test_every_scheme_is_disjoint_covering_and_nonempty(
    labels: torch.Tensor, groups: torch.Tensor, scheme: str, n_agents: int
):
    parts = partition(labels, n_agents, scheme, seed=3, **options(scheme, groups))
    check_cover(parts, len(labels), n_agents)


@pytest.mark.parametrize("n_agents", [3, 7, 10, 825])
def test_iid_sizes_differ_by_at_most_one(labels: torch.Tensor, n_agents: int):
    sizes = [len(p) for p in partition(labels, n_agents, "iid")]
    assert max(sizes) - min(sizes) <= 1


def test_iid_spreads_classes_evenly(labels: torch.Tensor):
    hist = label_histogram(labels, partition(labels, 4, "iid"), 10)
    assert (hist > 0).all()


def test_iid_accepts_regression_targets():
    targets = torch.randn(50, generator=torch.Generator().manual_seed(0))
    check_cover(partition(targets, 6, "iid"), 50, 6)


@pytest.mark.parametrize(("n_agents", "per_agent"), [(5, 2), (10, 1), (10, 2), (16, 3), (40, 2)])
def test_shards_give_each_agent_at_most_classes_per_agent(
    labels: torch.Tensor, n_agents: int, per_agent: int
):
    parts = partition(labels, n_agents, "shards", classes_per_agent=per_agent, seed=1)
    check_cover(parts, len(labels), n_agents)
    classes_held = (label_histogram(labels, parts, 10) > 0).sum(dim=1)
    assert (classes_held <= per_agent).all()
    assert (classes_held >= 1).all()


def test_shards_are_skewed_compared_to_iid(labels: torch.Tensor):
    shards = label_histogram(labels, partition(labels, 10, "shards"), 10)
    iid = label_histogram(labels, partition(labels, 10, "iid"), 10)
    assert (shards > 0).sum() <= 20 < (iid > 0).sum()


def test_shards_with_fewer_shards_than_classes_still_cover(labels: torch.Tensor):
    parts = partition(labels, 2, "shards", classes_per_agent=2)
    check_cover(parts, len(labels), 2)


def mean_max_class_fraction(labels: torch.Tensor, parts: list[torch.Tensor]) -> float:
    hist = label_histogram(labels, parts, 10).double()  # (n_agents, n_classes)
    return (hist.max(dim=1).values / hist.sum(dim=1)).mean().item()


def test_dirichlet_small_alpha_is_more_skewed_than_large_alpha(labels: torch.Tensor):
    skewed = partition(labels, 8, "dirichlet", alpha=0.1, seed=0)
    mixed = partition(labels, 8, "dirichlet", alpha=100.0, seed=0)
    check_cover(skewed, len(labels), 8)
    check_cover(mixed, len(labels), 8)
    assert mean_max_class_fraction(labels, skewed) > 0.5
    assert mean_max_class_fraction(labels, mixed) < 0.2
    # near-IID: every agent sees every class
    assert (label_histogram(labels, mixed, 10) > 0).all()


def test_dirichlet_that_keeps_leaving_an_agent_empty_raises():
    y = torch.tensor([0] * 30 + [1] * 30)
    with pytest.raises(DataError, match=r"agent \d+ without samples.*dirichlet_alpha"):
        partition(y, 50, "dirichlet", alpha=0.001)


def test_dirichlet_accepts_more_classes_than_present(labels: torch.Tensor):
    check_cover(partition(labels, 5, "dirichlet", n_classes=12), len(labels), 5)


def test_dirichlet_rejects_labels_beyond_n_classes(labels: torch.Tensor):
    with pytest.raises(DataError, match="n_classes=5"):
        partition(labels, 5, "dirichlet", n_classes=5)


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_same_seed_same_parts_other_seed_other_parts(
    labels: torch.Tensor, groups: torch.Tensor, scheme: str
):
    kwargs = options(scheme, groups)
    first = partition(labels, 6, scheme, seed=11, **kwargs)
    again = partition(labels, 6, scheme, seed=11, **kwargs)
    other = partition(labels, 6, scheme, seed=12, **kwargs)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_global_random_state_is_untouched(labels: torch.Tensor, groups: torch.Tensor, scheme: str):
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()
    partition(labels, 4, scheme, **options(scheme, groups))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.array_equal(np.random.get_state()[1], numpy_state)


def test_label_histogram_counts_match_parts(labels: torch.Tensor):
    parts = partition(labels, 6, "dirichlet", seed=2)
    hist = label_histogram(labels, parts, 10)
    assert hist.shape == (6, 10)
    assert hist.dtype == torch.int64
    assert hist.sum(dim=1).tolist() == [len(p) for p in parts]
    assert torch.equal(hist.sum(dim=0), torch.bincount(labels, minlength=10))


@pytest.mark.parametrize("scheme", PARTITIONS)
def test_more_agents_than_samples_raises(scheme: str):
    y = torch.tensor([0, 1, 0, 1, 2])
    message = (
        "6 agents but only 5 training samples: every agent needs at least one sample; "
        "use at most 5 agents or a larger data set"
    )
    with pytest.raises(DataError) as info:
        partition(y, 6, scheme, **options(scheme, torch.arange(5)))
    assert str(info.value) == message


def test_as_many_agents_as_samples_is_allowed():
    y = torch.tensor([0, 1, 0, 1, 2])
    check_cover(partition(y, 5, "iid"), 5, 5)
    check_cover(partition(y, 5, "shards", classes_per_agent=1), 5, 5)


@pytest.mark.parametrize("scheme", ["shards", "dirichlet"])
def test_regression_labels_with_label_schemes_raise(scheme: str):
    with pytest.raises(DataError, match="'iid'"):
        partition(torch.linspace(0.0, 1.0, 20), 2, scheme)


def test_too_many_shards_raises():
    with pytest.raises(DataError, match="lower classes_per_agent"):
        partition(torch.tensor([0, 1, 2, 0, 1]), 3, "shards", classes_per_agent=2)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"n_agents": 0}, "agents"),
        ({"n_agents": 2.5}, "agents"),
        ({"n_agents": 4, "scheme": "dirichlet", "alpha": 0.0}, "dirichlet_alpha"),
        ({"n_agents": 4, "scheme": "dirichlet", "alpha": -1.0}, "dirichlet_alpha"),
        ({"n_agents": 4, "scheme": "shards", "classes_per_agent": 0}, "classes_per_agent"),
        ({"n_agents": 4, "seed": -1}, "seed"),
    ],
)
def test_bad_settings_raise_config_error_naming_the_key(
    labels: torch.Tensor, kwargs: dict, key: str
):
    with pytest.raises(ConfigError, match=key):
        partition(labels, **kwargs)


def test_unknown_scheme_lists_the_schemes(labels: torch.Tensor):
    with pytest.raises(ConfigError) as info:
        partition(labels, 4, "pathological")
    assert str(info.value) == (
        "unknown partition 'pathological': choose one of iid, shards, dirichlet, groups"
    )


# ---------------------------------------------------------------------- groups scheme


def test_groups_keep_each_group_whole_on_one_agent(labels: torch.Tensor, groups: torch.Tensor):
    parts = partition(labels, 8, "groups", seed=1, groups=groups)
    check_cover(parts, len(labels), 8)
    owners = [set(groups[p].tolist()) for p in parts]
    for a in range(8):
        for b in range(a + 1, 8):
            assert not owners[a] & owners[b], f"agents {a} and {b} share a group"
    assert set().union(*owners) == set(groups.tolist())


@pytest.mark.parametrize("n_agents", [2, 5, 8, 13])
def test_groups_balance_loads_within_the_largest_group(
    labels: torch.Tensor, groups: torch.Tensor, n_agents: int
):
    """Largest-first to the least-loaded agent keeps ``max - min <= largest group``."""
    counts = torch.bincount(groups)
    assert counts.max() >= 5 * counts[counts > 0].min(), "the example should be skewed"
    sizes = torch.tensor([len(p) for p in partition(labels, n_agents, "groups", groups=groups)])
    assert sizes.max() - sizes.min() <= counts.max()


def test_groups_balance_beats_the_bound_where_it_can():
    """Sizes 5, 4, 3, 3, 2, 1 on 3 agents: 5+1, 4+2, 3+3, loads 6, 6, 6 exactly."""
    ids = torch.from_numpy(np.repeat(np.arange(6), [5, 4, 3, 3, 2, 1]))
    sizes = sorted(len(p) for p in partition(ids, 3, "groups", seed=4, groups=ids))
    assert sizes == [6, 6, 6]


def test_groups_accept_regression_targets_of_any_shape():
    targets = torch.randn(30, 3, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(30) % 7
    check_cover(partition(targets, 3, "groups", groups=ids), 30, 3)
    check_cover(partition(targets, 3, "iid"), 30, 3)


def test_groups_without_ids_say_where_to_get_them(labels: torch.Tensor):
    with pytest.raises(DataError, match=r"from_tensors\(\.\.\., groups=\.\.\.\)"):
        partition(labels, 4, "groups")


def test_fewer_groups_than_agents_raises_with_both_counts(labels: torch.Tensor):
    ids = torch.arange(len(labels)) % 3
    with pytest.raises(DataError, match="3 groups but 4 agents"):
        partition(labels, 4, "groups", groups=ids)


def test_groups_of_the_wrong_length_raise(labels: torch.Tensor):
    with pytest.raises(DataError, match=f"groups has 10 ids but there are {len(labels)}"):
        partition(labels, 4, "groups", groups=torch.arange(10))


# ------------------------------------------------------------- inputs and their errors


def test_labels_must_be_a_tensor_with_a_sample_axis():
    with pytest.raises(DataError) as err:
        partition(torch.tensor(3), 1)
    assert str(err.value) == "labels must be a tensor of N training labels or targets, got ()"
    with pytest.raises(DataError, match=r"targets, got <class 'list'>$"):
        partition([0, 1, 1], 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad", [torch.zeros(6, 1, dtype=torch.int64), torch.zeros(6), np.zeros((2, 3), np.int64)]
)
def test_groups_must_be_one_integer_id_per_sample(bad):
    labels = torch.tensor([0, 1, 0, 1, 0, 1])
    with pytest.raises(DataError) as err:
        partition(labels, 2, "groups", groups=bad)
    assert str(err.value).startswith(
        f"groups must be one integer id per training sample, got shape {tuple(bad.shape)} "
    )
    assert str(err.value).endswith("nettrain.data.from_tensors(..., groups=...) numbers string ids")
    with pytest.raises(DataError) as err:
        partition(labels, 2, "groups", groups=torch.tensor([0, 1]))
    assert str(err.value) == (
        "groups has 2 ids but there are 6 training samples; give one group id per training sample"
    )
    with pytest.raises(DataError) as err:
        partition(labels, 2, "groups")
    assert str(err.value) == (
        "partition=groups needs per-sample group ids: from_tensors(..., groups=...) or an npz "
        "with groups_train; or choose partition=iid, shards or dirichlet"
    )


def test_groups_as_a_list_and_as_many_groups_as_agents():
    labels = torch.zeros(6, dtype=torch.int64)
    parts = partition(labels, 3, "groups", groups=[2, 2, 0, 1, 1, 0])  # type: ignore[arg-type]
    assert sorted(p.tolist() for p in parts) == [[0, 1], [2, 5], [3, 4]]


@pytest.mark.parametrize("scheme", ["shards", "dirichlet"])
def test_class_label_errors_name_the_scheme_and_the_labels(scheme: str):
    with pytest.raises(DataError) as err:
        partition(torch.linspace(0.0, 1.0, 20), 2, scheme)
    assert str(err.value) == (
        f"partition {scheme!r} splits by class label but the labels are float32 "
        "(regression targets?); use the 'iid' partition instead"
    )
    with pytest.raises(DataError) as err:
        partition(torch.tensor([0, -1, 1, 1]), 2, scheme)
    assert str(err.value) == f"class labels must be >= 0 for partition {scheme!r}, found -1"
    with pytest.raises(DataError) as err:
        partition(torch.tensor([0, 2, 1, 1]), 2, scheme, n_classes=2)
    assert str(err.value) == "n_classes=2 but the labels go up to 2"


@pytest.mark.parametrize("scheme", ["shards", "dirichlet"])
def test_n_classes_equal_to_the_labels_own_count_changes_nothing(labels: torch.Tensor, scheme: str):
    implicit = partition(labels, 5, scheme, seed=2)
    explicit = partition(labels, 5, scheme, seed=2, n_classes=10)
    assert all(torch.equal(a, b) for a, b in zip(implicit, explicit, strict=True))


def test_dirichlet_alpha_must_be_a_positive_number_not_a_bool(labels: torch.Tensor):
    with pytest.raises(ConfigError, match=r"dirichlet_alpha must be a positive number, got True"):
        partition(labels, 4, "dirichlet", alpha=True)


def test_dirichlet_keeps_a_draw_where_every_agent_has_one_sample():
    """Four samples, four agents, near-uniform proportions: some draw gives each agent
    exactly one sample, and that draw is kept."""
    parts = partition(torch.zeros(4, dtype=torch.int64), 4, "dirichlet", alpha=1000.0)
    assert sorted(len(p) for p in parts) == [1, 1, 1, 1]


def test_label_histogram_of_float_labels_and_of_no_parts():
    labels = torch.tensor([0.0, 1.0, 1.0, 2.0])
    hist = label_histogram(labels, [torch.tensor([0, 1]), torch.tensor([2, 3])], 3)
    assert hist.tolist() == [[1, 1, 0], [0, 1, 1]] and hist.dtype == torch.int64
    empty = label_histogram(labels, [], 3)
    assert empty.shape == (0, 3) and empty.dtype == torch.int64


def test_the_defaults_are_seed_0_and_alpha_one_half(labels: torch.Tensor):
    given = partition(labels, 4, "dirichlet", seed=0, alpha=0.5)
    default = partition(labels, 4, "dirichlet")
    assert all(torch.equal(a, b) for a, b in zip(default, given, strict=True))


def test_a_dirichlet_failure_names_the_empty_agent(monkeypatch):
    """The error names an agent the last draw left empty (here agent 2 of 3)."""
    module = importlib.import_module("nettrain.data.partition")  # the module, not the function

    def draw(members, n_agents, alpha, rng):
        return [np.arange(3), np.arange(3, 6), np.empty(0, np.int64)]

    monkeypatch.setattr(module, "_dirichlet_draw", draw)
    with pytest.raises(DataError) as err:
        partition(torch.tensor([0, 1, 0, 1, 0, 1]), 3, "dirichlet", alpha=0.5)
    assert str(err.value) == (
        "dirichlet partition with dirichlet_alpha=0.5 left agent 2 without samples in 100 "
        "draws (3 agents, 6 samples); use a larger dirichlet_alpha, fewer agents, or the "
        "'iid' partition"
    )
