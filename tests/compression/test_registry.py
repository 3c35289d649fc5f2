"""Building compressors by name; bad names and values fail with messages that say the fix."""

from __future__ import annotations

import math

import pytest
import torch

from nettrain.compression import (
    COMPRESSORS,
    QSGD,
    HalfPrecision,
    Identity,
    Lattice,
    TopK,
    build_compressor,
)
from nettrain.errors import ConfigError


@pytest.mark.parametrize("name", list(COMPRESSORS))
def test_every_name_builds_its_class(name):
    comp = build_compressor(name)
    assert isinstance(comp, COMPRESSORS[name])
    assert comp.name == name


def test_options_reach_the_compressor():
    assert build_compressor("lattice", bits=16, eps=0.01) == Lattice(eps=0.01, q=65536)
    assert build_compressor("lattice") == Lattice(eps=1e-3, q=256)
    assert build_compressor("qsgd", bits=3, norm="linf") == QSGD(bits=3, norm="linf")
    assert build_compressor("qsgd", bits=7, bucket=512) == QSGD(bits=7, bucket=512)
    assert build_compressor("qsgd").bucket == 0  # one scale for the whole row
    assert build_compressor("topk", k_ratio=0.1) == TopK(ratio=0.1)
    assert build_compressor("bf16") == HalfPrecision(torch.bfloat16)
    assert build_compressor("none", bits=99) == Identity()  # options it does not use


BAD = [
    (lambda: build_compressor("gzip"), r"compressor='gzip' is unknown; choose one of none, fp16"),
    (lambda: build_compressor("lattice", bits=0), r"lattice bits must be an integer in 1\.\.16"),
    (lambda: build_compressor("lattice", bits=32), r"got 32 \(8 and 16 are the usual"),
    (lambda: build_compressor("lattice", bits=8.0), r"lattice bits must be an integer"),
    (lambda: build_compressor("lattice", bits=True), r"lattice bits must be an integer"),
    (lambda: build_compressor("lattice", eps=0.0), r"eps must be a finite number > 0, got 0\.0"),
    (lambda: build_compressor("lattice", eps=-1e-3), r"eps must be a finite number > 0"),
    (lambda: build_compressor("lattice", eps=math.nan), r"eps must be a finite number > 0"),
    (lambda: Lattice(q=1), r"lattice q must be an integer in 2\.\.65536, got 1"),
    (lambda: Lattice(q=2**17), r"lattice q must be an integer in 2\.\.65536"),
    (lambda: build_compressor("qsgd", bits=0), r"qsgd bits must be an integer in 1\.\.16, got 0"),
    (lambda: build_compressor("qsgd", bits=17), r"a sign bit is sent besides"),
    (lambda: build_compressor("qsgd", norm="l1"), r"qsgd norm='l1' is unknown; choose one of l2"),
    (lambda: build_compressor("qsgd", bucket=-1), r"qsgd bucket must be an integer >= 0, got -1"),
    (lambda: build_compressor("topk", k_ratio=0.0), r"k_ratio must be a fraction in \(0, 1\]"),
    (lambda: build_compressor("topk", k_ratio=1.5), r"got 1\.5; e\.g\. 0\.01 keeps 1%"),
    (lambda: TopK(k=0), r"topk k must be an integer >= 1, got 0"),
    (lambda: TopK(), r"exactly one of k .* or ratio"),
    (lambda: TopK(k=2, ratio=0.5), r"exactly one of k .* or ratio"),
    (
        lambda: HalfPrecision(torch.float32),
        r"float16 or torch\.bfloat16, got torch\.float32",
    ),
    (lambda: Identity().encode(torch.ones(5)), r"stack x: \(m, d\).*x\.reshape\(1, -1\)"),
    (lambda: Identity().encode(torch.ones(2, 3, dtype=torch.int64)), r"floating-point"),
    (lambda: Lattice().encode(torch.ones(2, 3), torch.ones(3, 2)), r"ref must have the shape"),
    (lambda: Lattice().decode(Lattice().encode(torch.ones(2, 3)), torch.ones(2, 4)), r"\(2, 3\)"),
]


# ids without the regex escapes, so that each case can be named on the command line
@pytest.mark.parametrize(("make", "message"), BAD, ids=[m.replace("\\", "") for _, m in BAD])
def test_bad_configs_raise_config_error(make, message):
    with pytest.raises(ConfigError, match=message):
        make()
