"""The virtual clock calibrated: its constants measured on this machine.

``nettrain calibrate`` (the Python API: :func:`calibrate`) measures, for the model and
batch of a config (the keys ``nettrain run`` takes) and with the run's ``P`` processes
busy at once (loaded.py says how)::

    compute    one agent's seconds per training sample: the oracle's forward and
               backward pass, warm (and alone, median of repeats: compute.py)
    link       latency and bandwidth: neighbour exchanges of message sizes from
               --min-bytes to --max-bytes (doubling), fitted by least squares as
               one_way_seconds = latency + bytes / bandwidth (fit.py)
    all-reduce seconds of an all-reduce of the model's d floats over P processes
    rpc        seconds of an rpc exchange of d floats each way
    engine     seconds of the distributed engine's round besides the pass: a run of
               local SGD that never averages

and writes them, with what they were measured for and on (date, host, versions,
threads), as a profile (:class:`~nettrain.engines.sim.profile.Profile`, a TOML file)
that ``cost_model=PATH`` loads into the clock. The processes are P spawned on this
machine (``--processes``), meeting on loopback (``master_addr``, ``master_port``); under
``torchrun`` they are the launched ranks, and the link is the one between neighbouring
ranks (across machines: between their machines). The oracle's pass alone is timed
before the processes start. :func:`average_profiles` makes one profile of several
calibrations of the same run (before and after it, say, on a machine whose load moves).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nettrain.calibration.fit import LinkFit, fit_link
    from nettrain.calibration.measure import Calibration, calibrate
    from nettrain.engines.sim.profile import Profile, average_profiles, load_profile

# Imported on first use (PEP 562): the processes that measure the link import this
# package, and should not wait for the experiment's imports.
_LAZY = {
    "Calibration": "nettrain.calibration.measure",
    "calibrate": "nettrain.calibration.measure",
    "LinkFit": "nettrain.calibration.fit",
    "fit_link": "nettrain.calibration.fit",
    "Profile": "nettrain.engines.sim.profile",
    "load_profile": "nettrain.engines.sim.profile",
    "average_profiles": "nettrain.engines.sim.profile",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nettrain.calibration' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "Calibration",
    "LinkFit",
    "Profile",
    "average_profiles",
    "calibrate",
    "fit_link",
    "load_profile",
]
