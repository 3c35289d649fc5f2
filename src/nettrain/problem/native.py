"""C kernels for the batched CNN's convolutions that max-pooling follows, compiled on
first use.

The first layer of a small convolutional network is where eager kernels lose the most:
a convolution of one or three input channels does little arithmetic per element it
writes, and the grouped convolution of all agents (``m * O`` output channels, groups of
``C`` inputs) runs at a few percent of the matrix-product rate, then max-pooling and
ReLU read and write its full-size output again, forward and backward. :class:`ConvPool`
does ``relu(maxpool2x2(conv(x)))`` for every agent in one pass over the images, keeping
only the pooled output and which of the four pixels won, and the weight gradient reads
just those winners. The data has no gradient, so that layer is the model's first.

Any other convolution that a max-pooling follows (:class:`PooledConv`) runs forward on
torch's kernels, but keeps only the pooled output and the pooling's indices, and its
backward pass starts from the pooled gradient: only the pixels that won their windows
carry a gradient (a quarter of them for 2x2 windows, fewer after ReLU), so the input and
weight gradients are sums over those alone, without the full-size gradient of the
convolution's output that torch's pooling backward writes and its convolution backward
reads. The sums are in ``csrc/conv_pool_impl.h``.

The kernels are C with vector extensions and OpenMP. :func:`library` compiles them with
the system C compiler (``$CC``, else ``cc``) into ``$XDG_CACHE_HOME/nettrain`` (default
``~/.cache/nettrain``), named by a hash of the source, the compiler and the CPU, and loads
them with ``ctypes``; later processes load the cached file. Without a working compiler it
warns once, in one line, and the layers run as before on PyTorch's kernels (same
numbers to rounding).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import threading
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nettrain.problem.compiled import cause

SOURCE = Path(__file__).with_name("csrc") / "conv_pool.c"
VL = 8  # channels a vector in the kernel (its VL): weights are padded to a multiple
FLAGS = (
    ("-O3", "-march=native", "-fopenmp"),  # vectorised for this CPU, threads
    ("-O3", "-fopenmp"),  # a compiler without -march=native
    ("-O3",),  # without OpenMP: one thread
)
_INT, _PTR = ctypes.c_int, ctypes.c_void_p


def cache_dir() -> Path:
    """Where compiled kernels are kept: ``$XDG_CACHE_HOME/nettrain`` or
    ``~/.cache/nettrain``."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "nettrain"


def _cpu(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model and feature flags (``-march=native`` builds for them), from Linux's
    ``cpuinfo`` (each distinct line once: not the clock rate, which changes as it runs),
    else what ``platform`` says."""
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    keep = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line for line in lines if line.startswith(keep)}))


def _build(compiler: str, target: Path) -> None:
    """Compile :data:`SOURCE` into the shared library ``target`` with the first set of
    :data:`FLAGS` the compiler accepts (written to a temporary name, then renamed, so
    that processes building at once never load a partial file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}-{threading.get_ident()}")
    message = ""
    for flags in FLAGS:
        command = [compiler, *flags, "-shared", "-fPIC", str(SOURCE), "-o", str(partial)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0:
            os.replace(partial, target)
            return
        partial.unlink(missing_ok=True)
        lines = done.stderr.splitlines() or [f"exit status {done.returncode}"]
        message = next((line for line in lines if "error" in line), lines[-1]).strip()
    raise RuntimeError(f"{compiler} failed: {message}")


@functools.cache
def library() -> ctypes.CDLL | None:
    """The compiled kernels (built on the first call of a process whose cache lacks them),
    or None, warned once, where they cannot be built or loaded."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    try:
        if compiler is None:
            raise RuntimeError("no C compiler found (set CC, or install gcc)")
        version = subprocess.run([compiler, "--version"], capture_output=True, text=True)
        key = hashlib.sha256()
        for part in (SOURCE.read_bytes(), SOURCE.with_name("conv_pool_impl.h").read_bytes()):
            key.update(part)
        key.update(f"{compiler}\n{version.stdout}\n{FLAGS}\n{_cpu()}".encode())
        target = cache_dir() / f"conv_pool-{key.hexdigest()[:16]}.so"
        if not target.exists():
            _build(compiler, target)
        lib = ctypes.CDLL(str(target))
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        warnings.warn(
            f"nettrain: the C kernels of convolutions could not be built ({cause(error)}); "
            "they run on PyTorch's kernels",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    for suffix in ("f32", "f64"):
        getattr(lib, f"nettrain_conv_pool_forward_{suffix}").argtypes = [_PTR] * 5 + [_INT] * 12
        getattr(lib, f"nettrain_conv_pool_backward_{suffix}").argtypes = [_PTR] * 6 + [_INT] * 12
        kernel = getattr(lib, f"nettrain_pooled_conv_backward_{suffix}")
        kernel.argtypes = [_PTR] * 7 + [_INT] * 18
    return lib


SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def runs_natively(x: torch.Tensor, weight: torch.Tensor, padding: tuple[int, int]) -> bool:
    """Whether :class:`ConvPool` can run the layer on these tensors: shapes that fit each
    other (else torch's kernels name what is wrong), with a pooled output of at least one
    pixel; on the CPU, in float32 or float64, outside ``torch.compile``'s tracing, the data
    without a gradient, and the kernels built (:func:`library`)."""
    fits = (
        x.dim() == 5
        and weight.dim() == 5
        and x.shape[0] == weight.shape[0]
        and x.shape[2] == weight.shape[2]
        and x.shape[3] + 2 * padding[0] - weight.shape[3] >= 1
        and x.shape[4] + 2 * padding[1] - weight.shape[4] >= 1
    )
    return fits and not x.requires_grad and available(x, weight)


def available(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernels can run on these tensors: on the CPU, in float32 or float64,
    outside ``torch.compile``'s tracing, and built (:func:`library`)."""
    return (
        x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.dtype == weight.dtype
        and x.dtype in SUFFIX
        and not torch.compiler.is_compiling()
        and library() is not None
    )


class ConvPool(torch.autograd.Function):
    """``relu(maxpool2x2(conv(x)))`` of ``m`` agents (ReLU optional), as the batched
    model's ``images`` layout: ``x (m, B, C, H, W)`` data, ``weight (m, O, C, kh, kw)``,
    ``bias (m, O)`` or None, stride 1, zero ``padding (ph, pw)`` → ``(B, m * O, H2, W2)``
    channels last, ``H2 = (H + 2 ph - kh + 1) // 2``. Gradients of the weights and biases
    (none for ``x``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        padding: tuple[int, int],
        relu: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m, B, C, H, W = x.shape
        c_out, kh, kw = weight.shape[1], weight.shape[3], weight.shape[4]
        H2, W2 = (H + 2 * padding[0] - kh + 1) // 2, (W + 2 * padding[1] - kw + 1) // 2
        packed, packed_bias = _pack(weight, bias)
        y = torch.empty((B, m * c_out, H2, W2), dtype=x.dtype, memory_format=torch.channels_last)
        arg = torch.empty_like(y, dtype=torch.uint8)
        x = x.contiguous()
        kernel = getattr(library(), f"nettrain_conv_pool_forward_{SUFFIX[x.dtype]}")
        kernel(
            x.data_ptr(), packed.data_ptr(), packed_bias.data_ptr(), y.data_ptr(),
            arg.data_ptr(), m, B, C, H, W, c_out, kh, kw, *padding, relu, torch.get_num_threads(),
        )  # fmt: skip
        return y, arg

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:  # type: ignore[override]
        x, weight, bias, padding, relu = inputs
        y, arg = output
        ctx.mark_non_differentiable(arg)
        ctx.save_for_backward(x, y, arg)
        ctx.conv = (weight.shape, bias is not None, padding, relu)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dy: torch.Tensor, _: torch.Tensor | None
    ) -> tuple[None, torch.Tensor, torch.Tensor | None, None, None]:
        x, y, arg = ctx.saved_tensors
        shape, has_bias, padding, relu = ctx.conv
        m, B, C, H, W = x.shape
        c_out, taps = shape[1], shape[2] * shape[3] * shape[4]
        padded = _padded(c_out)
        dw = torch.empty((m, taps, padded), dtype=x.dtype)
        db = torch.empty((m, padded), dtype=x.dtype)
        dy = dy.contiguous(memory_format=torch.channels_last)
        kernel = getattr(library(), f"nettrain_conv_pool_backward_{SUFFIX[x.dtype]}")
        kernel(
            x.contiguous().data_ptr(), dy.data_ptr(), y.data_ptr(), arg.data_ptr(),
            dw.data_ptr(), db.data_ptr(), m, B, C, H, W, c_out, *shape[3:], *padding, relu,
            torch.get_num_threads(),
        )  # fmt: skip
        grad_weight = dw[:, :, :c_out].transpose(1, 2).reshape(shape)
        return None, grad_weight, db[:, :c_out] if has_bias else None, None, None


class PooledConv(torch.autograd.Function):
    """``relu(maxpool(conv(x)))`` of ``m`` agents (ReLU optional) in the batched model's
    ``images`` layout, any layer: ``x (B, m * C, H, W)``, ``weight (m, O, C, kh, kw)``,
    ``bias (m, O)`` or None, ``conv = (stride, padding, dilation)`` and ``pool`` the
    arguments of ``F.max_pool2d``. Forward by torch's kernels, keeping only the pooled
    output and the pooling's indices (not the convolution's output); backward by the C
    kernel, which reads the gradient only at the pixels that won their windows: no
    full-size gradient of the convolution's output is made, and the input gradient and
    weight gradient are formed from the pooled gradient directly."""

    @staticmethod
    def forward(  # type: ignore[override]
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        conv: tuple[tuple[int, int], tuple[int, int], tuple[int, int]],
        pool: tuple[Any, ...],
        relu: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        m = weight.shape[0]
        flat_bias = None if bias is None else bias.reshape(-1)
        z = F.conv2d(x, weight.reshape(-1, *weight.shape[2:]), flat_bias, *conv, m)
        y, idx = F.max_pool2d(z, *pool, return_indices=True)
        return (torch.relu(y) if relu else y), idx

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:  # type: ignore[override]
        x, weight, bias, conv, _, relu = inputs
        y, idx = output
        ctx.mark_non_differentiable(idx)
        ctx.save_for_backward(x, weight, y, idx)
        ctx.conv, ctx.has_bias, ctx.relu = conv, bias is not None, relu
        ctx.out_size = [  # the convolution's output (Ho, Wo)
            (n + 2 * p - d * (k - 1) - 1) // s + 1
            for n, k, s, p, d in zip(x.shape[2:], weight.shape[3:], *conv, strict=True)
        ]

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, dy: torch.Tensor, _: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor | None, None, None, None]:
        x, weight, y, idx = ctx.saved_tensors
        (sh, sw), (ph, pw), (dh, dw_) = ctx.conv
        m, c_out, c_in, kh, kw = weight.shape
        B, _, H, W = x.shape
        g = torch.where(y > 0, dy, 0) if ctx.relu else dy
        g = g.contiguous(memory_format=torch.channels_last)
        idx = idx.contiguous(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        padded = _padded(c_in)
        packed = weight.new_zeros((m, c_out, kh * kw, padded))
        packed[..., :c_in] = weight.detach().reshape(m, c_out, c_in, -1).transpose(2, 3)
        dx = None
        if ctx.needs_input_grad[0]:
            dx = torch.empty_like(x, memory_format=torch.channels_last)
        dw = torch.empty_like(packed)
        db = weight.new_empty((m, c_out))
        kernel = getattr(library(), f"nettrain_pooled_conv_backward_{SUFFIX[x.dtype]}")
        kernel(
            x.data_ptr(), packed.data_ptr(), g.data_ptr(), idx.data_ptr(),
            None if dx is None else dx.data_ptr(), dw.data_ptr(), db.data_ptr(),
            m, B, c_in, H, W, c_out, kh, kw, sh, sw, ph, pw, dh, dw_, *ctx.out_size,
            y.shape[2] * y.shape[3], torch.get_num_threads(),
        )  # fmt: skip
        grad_weight = dw[..., :c_in].transpose(2, 3).reshape(weight.shape)
        return dx, grad_weight, db if ctx.has_bias else None, None, None, None


def _padded(channels: int) -> int:
    """``channels`` rounded up to a whole number of the kernels' vectors (:data:`VL`)."""
    return -(-channels // VL) * VL


def _pack(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's layouts: weights ``(m, K, padded)`` (tap-major, output channels padded
    with zeros to a multiple of :data:`VL`) and biases ``(m, padded)``."""
    m, c_out = weight.shape[:2]
    padded = _padded(c_out)
    packed = weight.new_zeros((m, weight[0, 0].numel(), padded))
    packed[:, :, :c_out] = weight.detach().reshape(m, c_out, -1).transpose(1, 2)
    packed_bias = weight.new_zeros((m, padded))
    if bias is not None:
        packed_bias[:, :c_out] = bias.detach()
    return packed, packed_bias
