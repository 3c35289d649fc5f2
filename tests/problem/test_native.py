"""The fused first layer (``nettrain.problem.native``): convolution, 2x2 max-pooling and
ReLU of a stack of agents in one C kernel, against torch's kernels."""

from __future__ import annotations

import platform

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from nettrain.data import Dataset
from nettrain.problem import native
from nettrain.problem.batched import BatchedModel, FirstConvPool
from nettrain.problem.execution import Execution
from nettrain.problem.losses import Regularizer, get_loss
from nettrain.problem.models import build_model
from nettrain.problem.native import ConvPool, PooledConv, available, library, runs_natively
from nettrain.problem.oracle import Problem


def torch_layer(x, weight, bias, padding, relu):
    """The layer by torch's kernels, one model per agent: ``(m, B, O, H2, W2)``."""
    outs = []
    for xi, wi, bi in zip(x, weight, bias if bias is not None else [None] * len(x), strict=True):
        y = F.max_pool2d(F.conv2d(xi, wi, bi, padding=padding), 2)
        outs.append(torch.relu(y) if relu else y)
    return torch.stack(outs)


def two_agents(net: nn.Module) -> dict[str, torch.Tensor]:
    """The batched model's parameters ``{name: (2, *shape)}``: two agents holding ``net``'s."""
    return {k: v.detach()[None].expand(2, *v.shape) for k, v in net.named_parameters()}


def module_outputs(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net`` on each agent's samples ``x: (m, B, ...)``, in the batched layout ``(m, K, B)``."""
    m, B = x.shape[:2]
    return net(x.flatten(0, 1)).view(m, B, -1).transpose(1, 2)


def per_agent(y: torch.Tensor, m: int) -> torch.Tensor:
    """``(B, m * O, H2, W2)`` images as ``(m, B, O, H2, W2)``."""
    B, mo, h, w = y.shape
    return y.view(B, m, mo // m, h, w).transpose(0, 1)


SHAPES = {  # m, B, C, H, W, O, (kh, kw), padding, bias, relu
    "small CNN's first layer": (3, 4, 1, 12, 12, 8, (3, 3), (1, 1), True, True),
    "channels past a vector": (2, 3, 1, 8, 9, 10, (3, 3), (1, 1), True, True),
    "RGB, 5x3 kernel, uneven padding, odd sizes": (3, 2, 3, 9, 11, 17, (5, 3), (2, 0), True, False),
    "no bias, no padding": (2, 2, 2, 7, 8, 3, (3, 3), (0, 0), False, True),
    "one pooled pixel": (1, 1, 1, 4, 4, 8, (3, 3), (0, 0), True, True),
    "one output channel": (2, 3, 1, 6, 6, 1, (3, 3), (1, 1), True, True),
}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", SHAPES)
def test_fused_layer_equals_torch_kernels(shape: str, dtype: torch.dtype) -> None:
    """Output, weight and bias gradients of every agent equal torch's to rounding."""
    m, B, C, H, W, c_out, kernel, padding, has_bias, relu = SHAPES[shape]
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, B, C, H, W, generator=gen, dtype=dtype)
    weight = torch.randn(m, c_out, C, *kernel, generator=gen, dtype=dtype, requires_grad=True)
    bias = (
        torch.randn(m, c_out, generator=gen, dtype=dtype, requires_grad=True) if has_bias else None
    )
    params = [weight] if bias is None else [weight, bias]
    y, arg = ConvPool.apply(x, weight, bias, padding, relu)
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert arg.dtype == torch.uint8 and int(arg.max()) <= 3
    expected = torch_layer(x, weight, bias, padding, relu)
    tol = {"rtol": 0, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(per_agent(y, m), expected, **tol)
    dy = torch.randn(expected.shape, generator=gen, dtype=dtype)
    grads = torch.autograd.grad(y, params, dy.transpose(0, 1).reshape(y.shape))
    for got, want in zip(grads, torch.autograd.grad(expected, params, dy), strict=True):
        torch.testing.assert_close(got, want, **tol)


def test_ties_go_to_the_first_pixel_and_nan_wins_as_in_torch() -> None:
    """Images of 0 and 1 with integer weights: the windows' maxima tie often, exactly;
    torch's pooling routes the gradient to the first maximal pixel and so must the
    kernel. A NaN pixel wins its window, forward and backward."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 2, (2, 6, 1, 10, 10), generator=gen).double()
    x[1, 2, 0, 3, 4] = float("nan")
    weight = torch.randint(-1, 2, (2, 8, 1, 3, 3), generator=gen).double().requires_grad_()
    bias = torch.zeros(2, 8, dtype=torch.float64, requires_grad=True)
    y, _ = ConvPool.apply(x, weight, bias, (1, 1), False)
    expected = torch_layer(x, weight, bias, (1, 1), False)
    torch.testing.assert_close(per_agent(y, 2), expected, rtol=0, atol=0, equal_nan=True)
    dy = torch.randn(expected.shape, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad(y, [weight, bias], dy.transpose(0, 1).reshape(y.shape))
    want = torch.autograd.grad(expected, [weight, bias], dy)
    for got, w in zip(grads, want, strict=True):
        torch.testing.assert_close(got, w, rtol=0, atol=1e-12, equal_nan=True)
    assert torch.isnan(grads[0][1]).any() and not torch.isnan(grads[0][0]).any()


def test_an_agents_numbers_depend_on_neither_threads_nor_the_other_agents() -> None:
    """Bit for bit in float32: agent 3 of five on two threads, and alone on one."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, 1, 12, 12, generator=gen)
    weight = torch.randn(5, 8, 1, 3, 3, generator=gen, requires_grad=True)
    bias = torch.randn(5, 8, generator=gen, requires_grad=True)
    dy = torch.randn(4, 40, 6, 6, generator=gen).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        y, _ = ConvPool.apply(x, weight, bias, (1, 1), True)
        gw, gb = torch.autograd.grad(y, [weight, bias], dy)
        torch.set_num_threads(1)
        w3, b3 = weight[3:4].detach().requires_grad_(), bias[3:4].detach().requires_grad_()
        y3, _ = ConvPool.apply(x[3:4], w3, b3, (1, 1), True)
        gw3, gb3 = torch.autograd.grad(y3, [w3, b3], dy[:, 24:32])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(y[:, 24:32], y3)
    assert torch.equal(gw[3:4], gw3) and torch.equal(gb[3:4], gb3)


def torch_pooled(x, weight, bias, conv, pool, relu):
    """Convolution, max-pooling and ReLU by torch's kernels, all agents as groups."""
    m = weight.shape[0]
    flat = None if bias is None else bias.reshape(-1)
    z = F.conv2d(x, weight.reshape(-1, *weight.shape[2:]), flat, *conv, m)
    y = F.max_pool2d(z, *pool)
    return torch.relu(y) if relu else y


# fmt: off
POOLED = {  # m, B, C, H, W, O, kernel, conv (stride, padding, dilation), pool, bias, relu
    "the small CNN's second layer":
        (3, 4, 8, 14, 14, 16, (3, 3), ((1, 1), (1, 1), (1, 1)), (2, 2, 0, 1, False), True, True),
    "strided, dilated, uneven; overlapping windows with padding and ceil mode":
        (2, 3, 3, 9, 11, 5, (3, 2), ((2, 1), (1, 0), (1, 2)), (3, 2, 1, 1, True), True, False),
    "channels past a vector, windows of stride 1, no bias":
        (3, 2, 10, 8, 8, 4, (3, 3), ((1, 1), (0, 0), (1, 1)), (2, 1, 0, 1, False), False, True),
}
# fmt: on


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("shape", POOLED)
def test_pooled_convolution_equals_torch_kernels(shape: str, dtype: torch.dtype) -> None:
    """Output and the input, weight and bias gradients of a convolution whose output is
    max-pooled, taken from the pooled gradient at the winning pixels, equal autograd's
    through torch's kernels."""
    m, B, C, H, W, c_out, kernel, conv, pool, has_bias, relu = POOLED[shape]
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(B, m * C, H, W, generator=gen, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(m, c_out, C, *kernel, generator=gen, dtype=dtype, requires_grad=True)
    bias = (
        torch.randn(m, c_out, generator=gen, dtype=dtype, requires_grad=True) if has_bias else None
    )
    params = [x, weight] + ([bias] if has_bias else [])
    y, idx = PooledConv.apply(x, weight, bias, conv, pool, relu)
    expected = torch_pooled(x, weight, bias, conv, pool, relu)
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    assert idx.dtype == torch.int64
    dy = torch.randn(expected.shape, generator=gen, dtype=dtype)
    tol = {"rtol": 0, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    grads = torch.autograd.grad(y, params, dy)
    for got, want in zip(grads, torch.autograd.grad(expected, params, dy), strict=True):
        torch.testing.assert_close(got, want, **tol)
    (dw,) = torch.autograd.grad(
        PooledConv.apply(x.detach(), weight, bias, conv, pool, relu)[0], [weight], dy
    )
    torch.testing.assert_close(dw, grads[1], rtol=0, atol=0)  # no input gradient asked
    (dx,) = torch.autograd.grad(
        PooledConv.apply(x, weight.detach(), bias, conv, pool, relu)[0], [x], dy
    )
    torch.testing.assert_close(dx, grads[0], rtol=0, atol=0)  # only the input gradient


def test_a_pooled_convolutions_numbers_depend_on_neither_threads_nor_other_agents() -> None:
    """Bit for bit in float32: agent 1 of three on two threads, and alone on one."""
    gen = torch.Generator().manual_seed(6)
    conv, pool = ((1, 1), (1, 1), (1, 1)), (2, 2, 0, 1, False)
    x = torch.randn(4, 3 * 8, 10, 10, generator=gen).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(3, 16, 8, 3, 3, generator=gen, requires_grad=True)
    bias = torch.randn(3, 16, generator=gen, requires_grad=True)
    dy = torch.randn(4, 48, 5, 5, generator=gen)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        xs = x.requires_grad_()
        y, _ = PooledConv.apply(xs, weight, bias, conv, pool, True)
        gx, gw, gb = torch.autograd.grad(y, [xs, weight, bias], dy)
        torch.set_num_threads(1)
        x1 = x.detach()[:, 8:16].contiguous(memory_format=torch.channels_last).requires_grad_()
        w1, b1 = weight[1:2].detach().requires_grad_(), bias[1:2].detach().requires_grad_()
        y1, _ = PooledConv.apply(x1, w1, b1, conv, pool, True)
        gx1, gw1, gb1 = torch.autograd.grad(y1, [x1, w1, b1], dy[:, 16:32])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(gx[:, 8:16], gx1)
    assert torch.equal(gw[1:2], gw1) and torch.equal(gb[1:2], gb1)


@pytest.mark.parametrize(
    ("layers", "kinds"),
    [
        (
            [nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3), nn.MaxPool2d(2)],
            ["FirstConvPool", "ConvMaxPool"],
        ),
        (
            [nn.Conv2d(1, 4, 3, stride=2), nn.MaxPool2d(3, 1, 1), nn.ReLU(), nn.Tanh()],
            ["ConvMaxPool", "Tanh"],
        ),
        (
            [nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Conv2d(4, 4, 3, groups=2), nn.MaxPool2d(2)],
            ["Conv2d", "Tanh", "Conv2d", "MaxPool2d"],
        ),
        (
            [nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Conv2d(4, 4, 3, padding="same"), nn.MaxPool2d(2)],
            ["Conv2d", "Tanh", "Conv2d", "MaxPool2d"],
        ),
        (
            [nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Conv2d(4, 4, 3), nn.AvgPool2d(2)],
            ["Conv2d", "Tanh", "Conv2d", "AvgPool2d"],
        ),
    ],
)
def test_convolutions_with_max_pooling_after_them_are_fused(layers, kinds) -> None:
    """Anywhere in the model: a convolution of one group and numeric padding, then any
    max-pooling, then a ReLU if any. The batched model's outputs are the module's."""
    net = nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(3))
    net(torch.zeros(1, 1, 12, 12))
    net = net.double()
    batched = BatchedModel.of(net, (1, 12, 12))
    assert batched is not None
    assert [type(layer).__name__ for _, layer in batched.layers][:-2] == kinds
    params = two_agents(net)
    x = torch.randn(2, 3, 1, 12, 12, dtype=torch.float64)
    out = batched.forward(params, x, torch.zeros(2, dtype=torch.int64))
    torch.testing.assert_close(out, module_outputs(net, x), rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    ("layers", "fused"),
    [
        ([nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)], 3),
        ([nn.Conv2d(1, 8, 3), nn.MaxPool2d(2, stride=2), nn.Tanh()], 2),
        ([nn.Conv2d(2, 8, 3, bias=False), nn.MaxPool2d((2, 2), (2, 2), (0, 0), (1, 1))], 2),
        ([nn.Conv2d(1, 8, 3, stride=2), nn.MaxPool2d(2)], 0),
        ([nn.Conv2d(1, 8, 3, dilation=2), nn.MaxPool2d(2)], 0),
        ([nn.Conv2d(2, 8, 3, groups=2), nn.MaxPool2d(2)], 0),
        ([nn.Conv2d(1, 8, 3, padding="same"), nn.MaxPool2d(2)], 0),
        ([nn.Conv2d(1, 8, 3), nn.MaxPool2d(3)], 0),
        ([nn.Conv2d(1, 8, 3), nn.MaxPool2d(2, stride=1)], 0),
        ([nn.Conv2d(1, 8, 3), nn.MaxPool2d(2, padding=1)], 0),
        ([nn.Conv2d(1, 8, 3), nn.MaxPool2d(2, ceil_mode=True)], 0),
        ([nn.Conv2d(1, 8, 3), nn.AvgPool2d(2)], 0),
        ([nn.Conv2d(1, 8, 3), nn.Tanh(), nn.MaxPool2d(2)], 0),
    ],
)
def test_only_a_first_convolution_with_max_pooling_after_it_is_fused(
    layers: list[nn.Module], fused: int
) -> None:
    """The kernel's case: stride 1, no dilation, one group, numeric zero padding, then a
    2x2 max-pooling of stride 2 without padding or ceil mode, then a ReLU if any. The
    batched model's outputs are the module's either way."""
    c = layers[0].in_channels
    net = nn.Sequential(*layers, nn.Flatten(), nn.LazyLinear(3))
    net(torch.zeros(1, c, 10, 10))
    net = net.double()
    batched = BatchedModel.of(net, (c, 10, 10))
    assert batched is not None
    first = batched.layers[0][1]
    if fused:
        assert isinstance(first, FirstConvPool) and len(first.parts) == fused
        assert len(batched.layers) == len(net) - fused + 1
    else:
        assert not isinstance(first, FirstConvPool)
    params = two_agents(net)
    x = torch.randn(2, 3, c, 10, 10, dtype=torch.float64)
    out = batched.forward(params, x, torch.zeros(2, dtype=torch.int64))
    torch.testing.assert_close(out, module_outputs(net, x), rtol=0, atol=1e-12)


def test_the_small_cnn_runs_its_first_layer_in_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    """A float32 pass of the built-in CNN on the CPU calls the fused kernel once (no
    silent fallback to torch's kernels), and its outputs are torch's."""
    net = build_model("cnn", (1, 12, 12), 10)
    batched = BatchedModel.of(net, (1, 12, 12))
    assert batched is not None
    calls = []
    apply = ConvPool.apply
    monkeypatch.setattr(ConvPool, "apply", lambda *a: calls.append(1) or apply(*a))
    params = two_agents(net)
    x = torch.randn(2, 3, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    out = batched.forward(params, x, torch.zeros(2, dtype=torch.int64))
    assert calls == [1]
    torch.testing.assert_close(out, module_outputs(net, x))
    w, pad = params["conv1.weight"], (1, 1)
    assert runs_natively(x, w, pad)
    assert not runs_natively(x.double(), w, pad)  # dtypes differ
    assert not runs_natively(x.to("meta"), w.to("meta"), pad)
    assert not runs_natively(x[:, :, :, :1, :1], w, (0, 0))  # no pooled pixel: torch says so
    assert not runs_natively(x.expand(2, 3, 2, 12, 12), w, pad)  # channels differ
    assert not runs_natively(x[:1], w, pad)  # agents differ
    assert not runs_natively(x.requires_grad_(), w, pad)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_native_false_runs_torch_kernels_with_the_same_gradients(dtype: torch.dtype) -> None:
    """``Execution(native=False)`` (the run's ``native=false``) keeps the layers apart;
    the oracle's losses and gradients are those of the fused layer to rounding."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(40, 1, 10, 10, generator=gen, dtype=dtype)
    y = torch.randint(0, 3, (40,), generator=gen)
    ds = Dataset("toy", x, y, x[:8], y[:8], n_classes=3)
    net = build_model("cnn", (1, 10, 10), 3).to(dtype)
    problems = [
        Problem(net, get_loss("cross_entropy"), Regularizer(), ds, execution=Execution(native=on))
        for on in (True, False)
    ]
    assert [isinstance(p.batched.layers[0][1], FirstConvPool) for p in problems] == [True, False]
    shards = [torch.arange(i, 40, 3) for i in range(3)]
    x0 = torch.stack([problems[0].initial_params(s) for s in range(3)])
    (lf, gf), (lt, gt) = (
        p.oracle(shards, range(3), batch_size=6, seed=1).grad(x0) for p in problems
    )
    tol = {"rtol": 0, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(lf, lt, **tol)
    torch.testing.assert_close(gf, gt, **tol)


@pytest.fixture
def fresh_library(monkeypatch: pytest.MonkeyPatch, tmp_path):
    """:func:`library` rebuilt into an empty cache under ``tmp_path``, and again for the
    tests after this one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    library.cache_clear()
    yield tmp_path / "nettrain"
    library.cache_clear()


def test_the_cache_is_under_xdg_cache_home_or_home(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert native.cache_dir() == tmp_path / "xdg" / "nettrain"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert native.cache_dir() == tmp_path / ".cache" / "nettrain"


@pytest.mark.parametrize(("size", "pad"), [(3, 0), (4, 0), (1, 1), (2, 1), (5, 2)])
def test_the_first_kernel_runs_where_the_pooling_has_a_pixel(size: int, pad: int) -> None:
    """A 3x3 convolution's output of ``size + 2 pad - 2`` pixels a side, pooled 2x2: the
    kernel runs where that leaves at least one pooled pixel (else torch says why not),
    each side on its own."""
    pools = (size + 2 * pad - 2) // 2 >= 1
    tall, wide = torch.randn(1, 8, 1, 3, 1), torch.randn(1, 8, 1, 1, 3)  # each side its own
    assert runs_natively(torch.randn(1, 2, 1, size, 8), tall, (pad, 1)) is pools
    assert runs_natively(torch.randn(1, 2, 1, 8, size), wide, (1, pad)) is pools


def test_the_kernels_need_both_tensors_on_the_cpu_in_one_float_type() -> None:
    x, w = torch.randn(2, 48, 4, 4), torch.randn(2, 8, 3, 3, 3)
    assert available(x, w) and available(x.double(), w.double())
    assert not available(x.to("meta"), w) and not available(x, w.to("meta"))
    assert not available(x.double(), w) and not available(x.half(), w.half())


def test_execution_parse_passes_native_on() -> None:
    assert Execution.parse("4", 1.5, True, False) == Execution(4, 1.5, True, False)
    assert Execution.parse("auto", 0.0).native


def test_data_of_other_channels_than_the_model_is_refused_by_torch() -> None:
    """Two channels of data for a first convolution of one: torch's error, not a kernel
    reading past the images."""
    net = build_model("cnn", (1, 8, 8), 3)
    batched = BatchedModel.of(net, (2, 8, 8))
    assert batched is not None
    params = two_agents(net)
    with pytest.raises(RuntimeError, match="expected input"):
        batched.forward(params, torch.randn(2, 3, 2, 8, 8), torch.zeros(2, dtype=torch.int64))


def test_the_cache_key_names_the_cpu_but_not_its_clock(tmp_path) -> None:
    info = tmp_path / "cpuinfo"
    core = "processor\t: {}\nmodel name\t: Some CPU\ncpu MHz\t\t: {}\nflags\t\t: fpu avx2\n"
    info.write_text(core.format(0, 2600.1) + "\n" + core.format(1, 1400.7))
    assert native._cpu(info) == "flags\t\t: fpu avx2\nmodel name\t: Some CPU"
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd\nCPU part\t: 0xd0c\nBogoMIPS\t: 50\n")
    assert native._cpu(arm) == "CPU part\t: 0xd0c\nFeatures\t: fp asimd"
    assert native._cpu(tmp_path / "none") in (platform.processor(), platform.machine())


def test_the_kernel_is_built_once_into_the_cache(fresh_library, monkeypatch, tmp_path) -> None:
    """The first process builds the library into the cache (its folders made as needed);
    later ones load that file; a cache emptied by hand is filled again."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not" / "yet"))
    cache = tmp_path / "not" / "yet" / "nettrain"
    assert library() is not None
    (built,) = cache.glob("conv_pool-*.so")
    library.cache_clear()
    build = native._build
    monkeypatch.setattr(native, "_build", lambda *_: pytest.fail("built again"))
    assert library() is not None
    assert list(cache.glob("*")) == [built]  # no partial files left behind
    built.unlink()
    library.cache_clear()
    monkeypatch.setattr(native, "_build", build)
    assert library() is not None
    assert list(cache.glob("*")) == [built]


def test_without_a_compiler_the_layer_runs_on_torch_kernels_warned_once(
    fresh_library, monkeypatch
) -> None:
    """A compiler that fails: one warning naming the cause, then torch's kernels give the
    same numbers."""
    monkeypatch.setenv("CC", "false")
    with pytest.warns(RuntimeWarning, match=r"could not be built \(RuntimeError: false failed"):
        assert library() is None
    net = build_model("cnn", (1, 8, 8), 3).double()
    batched = BatchedModel.of(net, (1, 8, 8))
    assert batched is not None
    params = two_agents(net)
    x = torch.randn(2, 3, 1, 8, 8, dtype=torch.float64)
    assert not runs_natively(x, params["conv1.weight"], (1, 1))  # no second warning
    out = batched.forward(params, x, torch.zeros(2, dtype=torch.int64))
    torch.testing.assert_close(out, module_outputs(net, x))


def test_a_compiler_error_is_named_in_the_warning(fresh_library, monkeypatch, tmp_path) -> None:
    """Each set of flags is tried; the warning quotes the last one's first error line."""
    cc = tmp_path / "cc"
    cc.write_text(
        '#!/bin/sh\necho "$@" >> "$0.calls"\n'
        '[ "$1" = --version ] && exit 0\n'
        'echo "conv_pool.c:1:2: error: no vectors here" >&2; echo "1 error" >&2; exit 1\n'
    )
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    with pytest.warns(
        RuntimeWarning, match=r"cc failed: conv_pool.c:1:2: error: no vectors here\)"
    ):
        assert library() is None
    calls = (tmp_path / "cc.calls").read_text().splitlines()
    assert [c.split(" -shared")[0] for c in calls[1:]] == [" ".join(f) for f in native.FLAGS]
    assert list(fresh_library.glob("*")) == []  # no partial files left behind
