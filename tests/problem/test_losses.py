"""A user's loss made per-sample (``per_sample``), the regularisers' values, gradients
and proximal operators, checked against the formulas written out here."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nettrain.errors import ConfigError
from nettrain.problem.flat import FlatSpec
from nettrain.problem.losses import Regularizer, cross_entropy, get_loss, per_sample, squared

B = 4


def pair(*shape: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(sum(shape))
    return (
        torch.randn(B, *shape, generator=gen, dtype=torch.float64),
        torch.randn(B, *shape, generator=gen, dtype=torch.float64),
    )


# --- per_sample ---


@pytest.mark.parametrize("shape", [(3,), (2, 2)])
def test_a_loss_module_with_reduction_gives_per_sample_sums(shape: tuple[int, ...]) -> None:
    """``nn.MSELoss()``: called with ``reduction='none'``, summed over all but the batch
    axis, ``(B,)``; the user's module keeps ``reduction='mean'``."""
    user = nn.MSELoss()
    loss = per_sample(user)
    out, target = pair(*shape)
    got = loss(out, target)
    want = ((out - target) ** 2).reshape(B, -1).sum(1)
    assert got.shape == (B,) and torch.allclose(got, want)
    assert user.reduction == "mean"
    assert user(out, target).shape == ()  # still the batch mean


def test_a_module_without_reduction_is_evaluated_one_sample_at_a_time() -> None:
    """A module with no ``reduction`` attribute averages its batch: it is called on one
    sample at a time, giving each sample's own mean, not the batch's."""

    class MeanSquare(nn.Module):
        def forward(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return ((out - target) ** 2).mean()

    out, target = pair(3)
    got = per_sample(MeanSquare())(out, target)
    assert got.shape == (B,) and torch.allclose(got, ((out - target) ** 2).mean(1))


def test_a_function_with_reduction_is_called_with_none_and_stays_one_dimensional() -> None:
    """``F.cross_entropy`` has a ``reduction`` parameter: the per-sample loss is
    ``-log softmax(out)[y]``, ``(B,)``, i.e. ``cross_entropy(reduction='none')``."""
    out, _ = pair(5)
    y = torch.tensor([0, 4, 2, 2])
    got = per_sample(F.cross_entropy)(out, y)
    want = torch.logsumexp(out, 1) - out[torch.arange(B), y]
    assert got.shape == (B,) and torch.allclose(got, want)
    assert torch.allclose(got, F.cross_entropy(out, y, reduction="none"))


def test_a_users_function_with_reduction_gets_none_and_is_summed_per_sample() -> None:
    """A plain function taking ``reduction`` is called with ``reduction='none'``
    (exactly), and its ``(B, 2, 2)`` result summed to ``(B,)``."""
    seen: list[str] = []

    def absolute(out: torch.Tensor, target: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        seen.append(reduction)
        value = (out - target).abs()
        return value if reduction == "none" else value.mean()

    out, target = pair(2, 2)
    got = per_sample(absolute)(out, target)
    assert seen == ["none"]
    assert got.shape == (B,) and torch.allclose(got, (out - target).abs().sum((1, 2)))


def test_a_loss_without_reduction_averages_one_sample_at_a_time() -> None:
    """A loss with no ``reduction`` parameter is taken to average its batch and is
    evaluated on one sample at a time: ``((o - t)^2).mean(1)``, not the batch mean."""
    out, target = pair(3)
    got = per_sample(lambda o, t: ((o - t) ** 2).mean())(out, target)
    assert got.shape == (B,) and torch.allclose(got, ((out - target) ** 2).mean(1))


def test_a_builtin_whose_signature_cannot_be_read_goes_one_sample_at_a_time() -> None:
    """``torch.dist`` is a builtin without a signature (``inspect.signature`` raises
    ValueError): per sample it is ``||o_i - t_i||_2``."""
    with pytest.raises(ValueError):
        inspect.signature(torch.dist)
    out, target = pair(3)
    got = per_sample(torch.dist)(out, target)
    assert got.shape == (B,) and torch.allclose(got, (out - target).norm(dim=1))


def test_a_callable_with_a_broken_signature_goes_one_sample_at_a_time() -> None:
    """A callable on which ``inspect.signature`` raises TypeError is treated like one
    without ``reduction``: evaluated per sample."""

    class Broken:
        __signature__: Any = "not a signature"

        def __call__(self, out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            return (out - target).abs().max()

    with pytest.raises(TypeError):
        inspect.signature(Broken())
    out, target = pair(3)
    got = per_sample(Broken())(out, target)
    assert got.shape == (B,) and torch.allclose(got, (out - target).abs().amax(1))


# --- the built-in losses ---


def test_auto_is_cross_entropy_for_class_labels_and_squared_for_targets() -> None:
    """``auto`` (classification by default) picks the loss from the kind of target; a
    loss given by name is that loss whatever the targets."""
    assert get_loss("auto") is cross_entropy
    assert get_loss("auto", classification=True) is cross_entropy
    assert get_loss("auto", classification=False) is squared
    assert get_loss("squared") is squared
    assert get_loss("cross_entropy", classification=False) is cross_entropy


def test_an_unknown_loss_is_refused_with_the_known_ones() -> None:
    message = r"^loss='hinge' is unknown; choose one of auto, cross_entropy, squared$"
    with pytest.raises(ConfigError, match=message):
        get_loss("hinge")


def test_squared_loss_of_class_labels_over_any_leading_axes() -> None:
    """``||out - onehot(y)||^2 / 2`` over the last (class) axis, whatever the axes before
    it: one sample ``(K,)`` with a 0-d label gives a 0-d loss, a stack ``(2, 2, K)`` one
    loss per ``(2, 2)`` entry. Values worked out by hand."""
    one = squared(torch.tensor([0.5, -1.0, 2.0]), torch.tensor(2))  # diff (0.5, -1, 1)
    assert one.shape == () and one.item() == 1.125
    out = torch.tensor([[[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0], [2.0, 0.0, 0.0]]])
    got = squared(out, torch.tensor([[2, 0], [1, 0]]))
    assert torch.equal(got, torch.tensor([[1.125, 0.5], [1.0, 0.5]]))


def test_squared_loss_of_targets_is_in_the_outputs_dtype() -> None:
    """Float targets are cast to the outputs' dtype: float64 targets do not turn a float32
    model's loss into float64."""
    out = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    got = squared(out, torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=torch.float64))
    assert got.dtype == torch.float32 and got.tolist() == [2.5, 6.5]


def test_squared_loss_of_class_labels_stays_on_the_outputs_device() -> None:
    """The one-hot classes are made on the outputs' device, not the default one: CPU
    outputs and labels under a meta default device give the CPU values worked out above
    (a meta ``arange`` could not be compared with CPU labels)."""
    out = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]])
    with torch.device("meta"):
        got = squared(out, torch.tensor([2, 0], device="cpu"))
    assert got.device.type == "cpu" and got.tolist() == [1.125, 0.5]


# --- Regularizer (value, gradient, proximal operator) ---

X = torch.tensor([[1.0, -2.0, 0.0], [0.5, 3.0, -1.5]], dtype=torch.float64)


def test_the_regularizers_values_over_the_last_axis() -> None:
    """``r(x) = lam ||x||_2^2`` (l2), ``lam ||x||_1`` (l1), 0 (none, whatever ``lam``),
    one value per row of ``x: (2, 3)``, in ``x``'s dtype."""
    l2 = Regularizer("l2", 0.3).value(X)
    assert l2.shape == (2,) and torch.allclose(l2, torch.tensor([0.3 * 5.0, 0.3 * 11.5]).double())
    l1 = Regularizer("l1", 0.3).value(X)
    assert l1.shape == (2,) and torch.allclose(l1, torch.tensor([0.3 * 3.0, 0.3 * 5.0]).double())
    none = Regularizer("none", 0.3).value(X)
    assert none.shape == (2,) and none.dtype == torch.float64 and not none.any()
    assert Regularizer().value(X[0]).shape == ()


def test_the_regularizers_values_of_one_vector_and_of_a_stack() -> None:
    """``x: (d,)`` (one agent's parameters, as the block oracle passes them) gives one
    value ``()``; ``x: (2, 1, d)`` gives ``(2, 1)``: the sum is over the last axis only."""
    for kind, want in [("l2", 0.5 * 5.0), ("l1", 0.5 * 3.0)]:
        got = Regularizer(kind, 0.5).value(X[0])
        assert got.shape == () and got.item() == want
    l1 = Regularizer("l1", 0.5).value(X[:, None])
    assert l1.shape == (2, 1) and l1.flatten().tolist() == [0.5 * 3.0, 0.5 * 5.0]


def test_the_regularizers_gradients() -> None:
    """``grad r = 2 lam x`` (l2), ``lam sign(x)`` (l1, 0 at 0), zeros of ``x``'s shape
    and dtype (none, whatever ``lam``)."""
    assert torch.allclose(Regularizer("l2", 0.3).grad(X), 0.6 * X)
    want = torch.tensor([[0.3, -0.3, 0.0], [0.3, 0.3, -0.3]], dtype=torch.float64)
    assert torch.equal(Regularizer("l1", 0.3).grad(X), want)
    none = Regularizer("none", 0.3).grad(X)
    assert none.shape == X.shape and none.dtype == torch.float64 and not none.any()


def test_the_proximal_operators() -> None:
    """``prox_{s r}(v)``: ``v / (1 + 2 lam s)`` (l2), soft-thresholding
    ``sign(v) max(|v| - lam s, 0)`` (l1), ``v`` (none); the step may be a tensor that
    broadcasts (one per row)."""
    v = torch.tensor([[3.0, -0.5, -2.0, 0.6], [1.0, -1.0, 0.2, 0.0]], dtype=torch.float64)
    assert torch.allclose(Regularizer("l2", 0.3).prox(v, 2.0), v / 2.2)
    soft = torch.tensor([[2.4, 0.0, -1.4, 0.0], [0.4, -0.4, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(Regularizer("l1", 0.3).prox(v, 2.0), soft)
    assert torch.equal(Regularizer("none", 0.3).prox(v, 2.0), v)
    step = torch.tensor([[1.0], [3.0]], dtype=torch.float64)  # thresholds 0.3 and 0.9
    soft = torch.tensor([[2.7, -0.2, -1.7, 0.3], [0.1, -0.1, 0.0, 0.0]], dtype=torch.float64)
    assert torch.allclose(Regularizer("l1", 0.3).prox(v, step), soft)
    assert torch.allclose(Regularizer("l2", 0.3).prox(v, step), v / (1 + 0.6 * step))


def test_the_regularizer_refuses_an_unknown_kind_and_takes_lambda_zero() -> None:
    """An unknown kind is a ConfigError listing the known ones; ``lam = 0`` is allowed."""
    message = r"regularizer='l3' is unknown; choose one of none, l2, l1"
    with pytest.raises(ConfigError, match=message):
        Regularizer("l3", 0.1)
    assert not Regularizer("l2", 0.0).value(X).any()


# --- FlatSpec ---


def test_a_flat_specs_repr_names_its_size_and_layers() -> None:
    """``FlatSpec(d=<d>: <name><shape>, ...)`` in parameter order."""
    spec = FlatSpec.of(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)))
    assert repr(spec) == "FlatSpec(d=19: 0.weight(3, 4), 0.bias(3,), 2.weight(1, 3), 2.bias(1,))"


def test_loading_into_a_module_with_other_parameters_is_refused() -> None:
    """``load_into`` copies the spec's tensors into a module with the same parameters; a
    module with one more or one fewer parameter tensor raises a ValueError rather than
    being loaded in part in silence (the tensors before the mismatch are copied)."""
    spec = FlatSpec.of(nn.Linear(4, 3))
    x = torch.arange(15.0)
    same = nn.Linear(4, 3)
    spec.load_into(same, x)
    assert torch.equal(same.weight, x[:12].view(3, 4)) and torch.equal(same.bias, x[12:])
    with pytest.raises(ValueError, match=r"^zip\(\) argument 2 is shorter than argument 1$"):
        spec.load_into(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 1)), x)
    with pytest.raises(ValueError, match=r"^zip\(\) argument 2 is longer than argument 1$"):
        spec.load_into(nn.Linear(4, 3, bias=False), x)
