"""Typed algorithm settings, the config's sections, and keys a method does not use."""

from __future__ import annotations

import json

import pytest

import nettrain
from nettrain.algorithms import (
    ADPSGD,
    ALGORITHMS,
    DPSGD,
    EAMSGD,
    NEXT,
    BlockAsyncSGD,
    EASGDAsync,
    SwarmSGD,
    TreeEASGD,
)
from nettrain.cli import _compare_items
from nettrain.compression import Lattice
from nettrain.config import SECTIONS, build_algorithm, load_config, used_keys
from nettrain.errors import ConfigError
from nettrain.experiment import comparison_configs

TINY = {"agents": 4, "rounds": 4, "eval_every": 2, "hidden": (8,), "progress": False}


def test_flat_keyword_settings_equal_the_config_built_ones() -> None:
    assert DPSGD(lr=0.05, momentum=0.9) == build_algorithm(
        load_config({"algorithm": "dpsgd", "lr": 0.05, "momentum": 0.9})
    )
    swarm = SwarmSGD(local_steps=2, compressor=Lattice(bits=8))
    assert swarm == build_algorithm(
        load_config({"algorithm": "swarm", "local_steps": 2, "quantizer": "lattice", "bits": 8})
    )
    assert swarm.compressor == Lattice(eps=1e-3, q=256)
    assert EASGDAsync(tau=16, servers=2).for_network(4).alpha == pytest.approx(0.9 / 4)
    assert NEXT(step0=0.5).steps.step0 == 0.5
    assert DPSGD(lr=0.3).sgd.lr == 0.3


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: DPSGD(momentum=1.5), r"momentum must be in \[0, 1\)"),
        (lambda: DPSGD(lr=0), "lr must be > 0"),
        (lambda: SwarmSGD(local_steps=-1), "local_steps must be >= 0"),
        (lambda: SwarmSGD(momentum=0.9), "swarm takes plain SGD steps"),
        (lambda: ADPSGD(local_steps=2), "adpsgd makes one local step"),
        (lambda: EASGDAsync(tau=0), "tau must be >= 1"),
        (lambda: EASGDAsync(momentum=0.9), "eamsgd has momentum"),
        (lambda: EAMSGD(), "eamsgd needs momentum > 0"),
        (lambda: EASGDAsync(alpha=0.9).for_network(4), "unstable unless 0 < beta < 2"),
        (lambda: TreeEASGD(branching=1), "branching >= 2"),
        (lambda: NEXT(surrogate="quadratic"), "surrogate='quadratic' is unknown"),
        (lambda: NEXT(step0=2.0), r"step0 .* must be in \(0, 1\]"),
        (lambda: BlockAsyncSGD(workers=4, blocks=2), "needs blocks >= workers"),
        (lambda: Lattice(bits=17), "lattice bits must be an integer in 1\\.\\.16"),
    ],
)
def test_settings_are_checked_where_they_are_defined(make, match) -> None:
    with pytest.raises(ConfigError, match=match):
        make()


def test_a_key_the_method_does_not_use_names_the_methods_that_do() -> None:
    with pytest.raises(
        ConfigError,
        match=r"local_steps=2 is not used by algorithm=dpsgd; it is "
        r"used by swarm, adpsgd",
    ):
        load_config({"algorithm": "dpsgd", "local_steps": 2})
    with pytest.raises(ConfigError, match=r"tau=16 is not used by algorithm=allreduce.*easgd"):
        load_config({"algorithm": "allreduce", "tau": 16})
    with pytest.raises(
        ConfigError,
        match=r"quantizer='lattice' is used by .*swarm; algorithm=adpsgd sends its models unc",
    ):
        load_config({"algorithm": "adpsgd", "quantizer": "lattice"})
    # a key at its default is not "given", and a run key belongs to no method
    assert load_config({"algorithm": "dpsgd", "local_steps": 1, "seed": 3}).seed == 3


def test_used_keys_are_the_settings_fields() -> None:
    assert used_keys(ALGORITHMS["dpsgd"]) == {
        "lr", "momentum", "nesterov", "weight_decay", "quantizer", "bits", "lattice_eps",
        "qsgd_bucket", "lr_warmup",
    }  # fmt: skip
    assert "tau" in used_keys(ALGORITHMS["easgd_async"]) and "servers" in used_keys(EASGDAsync)
    assert "quantizer" not in used_keys(ADPSGD)  # it has the field, but sends uncompressed
    assert {"surrogate", "prox_tau", "step0", "blocks"} <= used_keys(NEXT)


def test_sections_hold_every_key_once_and_read_flat_too(tmp_path) -> None:
    names = [f for cls in SECTIONS.values() for f in cls.__dataclass_fields__]
    assert len(names) == len(set(names))
    cfg = load_config({"algorithm": "dpsgd", "lr": 0.05, "topology": "torus"})
    assert cfg.method.lr == cfg.lr == 0.05 and cfg.network.topology == "torus"
    assert load_config(cfg.to_dict()) == cfg
    toml = tmp_path / "run.toml"
    toml.write_text('agents = 8\n[method]\nalgorithm = "swarm"\nlocal_steps = 3\n')
    tabled = load_config(toml)
    assert (tabled.agents, tabled.method.algorithm, tabled.local_steps) == (8, "swarm", 3)
    with pytest.raises(ConfigError, match="unknown config key 'local_step'; did you mean"):
        load_config({"local_step": 0.1})


def test_compare_scopes_keys_to_one_algorithm() -> None:
    items = _compare_items(
        ["swarm.local_steps=2", "quantizer=lattice", "agents=4"], ["swarm", "dpsgd"]
    )
    assert items.source is None and items.shared == {"quantizer": "lattice", "agents": "4"}
    assert items.grid == {} and items.algorithms == ["swarm", "dpsgd"]
    configs = comparison_configs(items.shared, ["swarm", "dpsgd"], items.settings)
    assert configs["swarm"].local_steps == 2 and configs["dpsgd"].local_steps == 1
    assert configs["dpsgd"].quantizer == "lattice"
    with pytest.raises(ConfigError, match="local_steps=2 is not used by algorithm=dpsgd"):
        comparison_configs({"local_steps": 2}, ["swarm", "dpsgd"])
    with pytest.raises(ConfigError, match="'easgd' is not one of the compared algorithms"):
        _compare_items(["easgd.tau=4"], ["swarm", "dpsgd"])


def test_an_algorithm_object_sets_the_keys_config_json_records(tmp_path) -> None:
    result = nettrain.run(TINY, tmp_path / "run", algorithm=DPSGD(lr=0.05, momentum=0.5))
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (saved["algorithm"], saved["lr"], saved["momentum"]) == ("dpsgd", 0.05, 0.5)
    assert result.summary["algorithm"] == "dpsgd"
    with pytest.raises(ConfigError, match=r"lr=0\.2 in the config, but the algorithm object"):
        nettrain.run(TINY | {"lr": 0.2}, algorithm=DPSGD(lr=0.05))


def test_a_network_dependent_default_is_fixed_for_the_run() -> None:
    """EASGD's alpha = 0 stands for 0.9 / n: the object given is fixed at n = 4 workers."""
    result = nettrain.run(TINY, algorithm=EASGDAsync(lr=0.05, tau=2))
    assert result.records[-1]["round"] == 4
    cfg = load_config(TINY | {"algorithm": "easgd_async"})
    assert build_algorithm(cfg).alpha == pytest.approx(0.9 / 4)
