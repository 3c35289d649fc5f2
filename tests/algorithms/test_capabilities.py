"""Every registered method declares consistent capabilities, and the configuration
refuses exactly the engines a method does not declare."""

from __future__ import annotations

import pytest

from nettrain.algorithms import ALGORITHMS, DPSGD, AsyncAlgorithm, Method
from nettrain.algorithms.base import ENGINE_NAMES
from nettrain.config import ENGINES, SHARED_MEMORY_ALGORITHMS, load_config
from nettrain.errors import ConfigError

NAMES = sorted(ALGORITHMS)
NEEDS = {"block_async": {"blocks": 4}, "eamsgd": {"momentum": 0.9}, "mdownpour": {"momentum": 0.9}}


@pytest.mark.parametrize("name", NAMES)
def test_capabilities_are_consistent(name: str) -> None:
    cls = ALGORITHMS[name]
    assert cls.schedule in ("rounds", "events")
    assert (cls.schedule == "events") == issubclass(cls, AsyncAlgorithm)
    if cls.schedule == "events":
        assert cls.partner in ("neighbour", "centre")
        assert (cls.partner == "centre") == cls.uses_centre
    else:
        assert cls.partner == "none"
        assert not cls.tolerates_faults  # faults are skipped exchanges of events
    assert cls.engines and cls.engines <= ENGINE_NAMES == set(ENGINES)
    assert "sim" in cls.engines  # the simulator runs every method
    if cls.engines != ENGINE_NAMES:
        assert cls.engines_note.strip(), f"{name} must say why it does not run everywhere"
    shared = "shared_memory" in cls.engines
    if cls.shared_writes:
        assert shared
    if shared:  # it brings its own steps for the shared model
        assert cls.shared_step is not Method.shared_step
        assert cls.shared_blocks is not Method.shared_blocks
        assert cls.schedule == "rounds"


def test_the_shared_memory_methods_come_from_the_capabilities() -> None:
    assert set(SHARED_MEMORY_ALGORITHMS) == {"block_async", "hogwild", "allreduce"}
    assert {n for n in NAMES if ALGORITHMS[n].shared_writes} == {"block_async", "hogwild"}


def test_geometric_phases_is_swarms_setting() -> None:
    swarm = ALGORITHMS["swarm"]
    assert swarm(local_steps=3, geometric_steps=True).geometric_phases
    assert not swarm(local_steps=3).geometric_phases
    assert not ALGORITHMS["easgd_async"]().geometric_phases


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", NAMES)
def test_each_engine_refuses_exactly_the_methods_that_do_not_name_it(
    name: str, engine: str
) -> None:
    cls = ALGORITHMS[name]
    overrides = {"algorithm": name, "engine": engine, "agents": 4}
    if engine == "shared_memory":
        overrides["processes"] = 2
    overrides |= NEEDS.get(name, {})
    if engine in cls.engines:
        load_config(overrides=overrides)
        return
    with pytest.raises(ConfigError, match=f"algorithm={name} cannot run there") as err:
        load_config(overrides=overrides)
    assert cls.engines_note in str(err.value)
    for allowed in cls.engines:  # and it says where the method does run
        assert f"engine={allowed}" in str(err.value)


def test_a_method_without_a_name_is_named_after_its_class() -> None:
    """A user's subclass that sets no ``name`` takes its class name; one that sets it
    keeps it, and the parent's name is untouched."""

    class MyGossip(DPSGD):
        pass

    class Named(DPSGD):
        name = "named_gossip"

    assert MyGossip.name == "MyGossip" and Named.name == "named_gossip"
    assert DPSGD.name == "dpsgd"
