"""The exceptions nettrain raises for bad input and failed runs.

Every message says what is wrong and how to fix it::

    NettrainError                  base class, catch this to catch them all
     +-- ConfigError (ValueError)  unknown key, bad value, inconsistent settings
     +-- DataError                 missing data files, empty shards
     +-- TopologyError             disconnected graph, non-stochastic weights
     +-- DivergenceError           NaN or inf during a run
     +-- FaultError                a synchronous method met a crashed agent or a
     |                             network split (injected: faults.py)
     +-- PeerError                 another process died or stopped answering
     |                             (engine=distributed)
     +-- WorkerFailed              a shared-memory worker process failed or died
                                   (engine=shared_memory)

The command line turns ``ConfigError``, ``DataError`` and ``TopologyError`` into
exit code 2 (bad input) and every other error into exit code 1.
"""

from __future__ import annotations


class NettrainError(Exception):
    """Base class of every error nettrain raises on purpose."""


class ConfigError(NettrainError, ValueError):
    """A configuration key or value is invalid."""


class DataError(NettrainError):
    """A data set cannot be loaded or partitioned as asked."""


class TopologyError(NettrainError):
    """A graph or mixing matrix violates a requirement (connectivity, stochasticity)."""


class DivergenceError(NettrainError):
    """The parameters or the loss became NaN or infinite during a run."""


class FaultError(NettrainError):
    """A synchronous method cannot go on: an agent crashed or the network is split."""


class PeerError(NettrainError):
    """Communication with another process failed: it died, hung, or the network broke."""


class WorkerFailed(NettrainError):
    """A worker process of the shared-memory engine stopped with an error or died."""
