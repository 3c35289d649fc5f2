"""Compression in the synchronous patterns and baselines: mixing, means, error feedback.

The communicator-level tests check the compressed mix and mean against their
uncompressed forms with the lattice quantiser's bound; the algorithm-level tests run
D-PSGD, local SGD, all-reduce SGD and gradient tracking on the least-squares problem
of ``test_baselines`` (its optimum known in closed form) and count bytes exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

from helpers import (
    iid_shards,
    least_squares_optimum,
    least_squares_problem,
    regression_data,
    sim_job,
)
from nettrain.algorithms.baselines import (
    DPSGD,
    AllReduceSGD,
    GradientTracking,
    LocalSGD,
    SGDRunState,
)
from nettrain.checkpoint import Checkpoint
from nettrain.compression import QSGD, HalfPrecision, Lattice, TopK
from nettrain.compression.payloads import pack, take_rows, unpack
from nettrain.config import build_algorithm, load_config
from nettrain.engines.base import declared
from nettrain.engines.sim.comm import SimCommunicator
from nettrain.engines.sim.engine import SimEngine
from nettrain.errors import ConfigError
from nettrain.experiment import resume, run
from nettrain.patterns import Codec
from nettrain.recording import RunFolder
from nettrain.topology import build_topology
from nettrain.wrappers import Compressed, ErrorFeedback

N = 8
CPU = torch.device("cpu")
LATTICE8 = Lattice.with_bits(8, eps=1e-3)  # radius (q - 1) eps / 2 = 0.1275


def near_points(n: int, d: int, spread: float, seed: int = 0) -> torch.Tensor:
    """``(n, d)`` float64 rows within ``spread`` (sup norm) of a common random point."""
    gen = torch.Generator().manual_seed(seed)
    centre = torch.randn(d, generator=gen, dtype=torch.float64)
    noise = torch.rand(n, d, generator=gen, dtype=torch.float64) * 2 - 1
    return centre + spread * noise


def ring_comm(n: int = N, schedule: str = "static") -> SimCommunicator:
    drop = 0.3 if schedule == "edge_drop" else 0.0
    topology = build_topology("ring", n, schedule=schedule, drop_prob=drop, seed=2)
    return SimCommunicator(topology, CPU, torch.float64)


# --- payloads ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "compressor", [LATTICE8, Lattice(eps=1e-3), QSGD(bits=4), TopK(k=5), HalfPrecision()]
)
def test_a_payload_packs_into_bytes_and_back(compressor) -> None:
    x = near_points(3, 40, 0.05)
    gen = torch.Generator().manual_seed(1)
    payload = compressor.encode(x, generator=gen)
    one = take_rows(payload, torch.tensor([2]))
    buffer = pack(one)
    assert buffer.dtype == torch.uint8
    back = unpack(buffer.clone(), take_rows(payload, torch.tensor([0])))
    torch.testing.assert_close(
        compressor.decode(back), compressor.decode(payload)[2:], rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="payload buffer"):
        unpack(torch.cat([buffer, buffer[:1]]), one)


# --- the compressed mix ---------------------------------------------------------------


@pytest.mark.parametrize("schedule", ["static", "edge_drop"])
def test_lattice_mix_within_the_guarantee_is_the_plain_mix_up_to_eps_over_two(
    schedule: str,
) -> None:
    """Rows within the radius of each other: each decoded ``x_j`` is within ``eps/2`` of
    ``x_j``, so ``sum_j W_ij x_hat_ij`` is within ``(1 - W_ii) eps / 2 <= eps / 2``."""
    comm = ring_comm(schedule=schedule)
    x = near_points(N, 300, spread=0.06)  # rows differ by < 0.12 < radius
    for t in range(5):
        plain = comm.mix(x, t)
        packed = Compressed(comm, LATTICE8).mix(x, t)
        err = (packed - plain).abs()
        assert err.max() <= LATTICE8.eps / 2 + 1e-12
        assert err.max() > LATTICE8.eps / 10  # it really was quantised
        off = 1 - comm.topology.weights(t).diagonal()  # (n,) weight of the neighbours
        assert (err.max(1).values <= off * LATTICE8.eps / 2 + 1e-12).all()


def test_lattice_mix_beyond_the_radius_wraps() -> None:
    """The guarantee is needed: rows 0.3 apart at 8 bits decode off by multiples of
    ``q eps = 0.256`` (what the bound of the test above rules out)."""
    comm = ring_comm()
    x = near_points(N, 300, spread=0.15)
    err = (Compressed(comm, LATTICE8).mix(x, 0) - comm.mix(x, 0)).abs()
    assert err.max() > 0.05


def test_decoding_uses_the_receivers_own_reference() -> None:
    """Shift every other row by ``q eps = 0.256`` (8 bits): the codes do not change, and
    each receiver decodes every neighbour near itself, so agent ``i`` gets
    ``W_i base + shift_i`` (within ``eps/2``), not ``W_i x``."""
    comm = ring_comm()
    base = near_points(N, 50, spread=0.01)
    shift = torch.tensor([0.256 if i % 2 == 0 else 0.0 for i in range(N)], dtype=torch.float64)
    got = Compressed(comm, LATTICE8).mix(base + shift[:, None], 0)
    expected = comm.mix(base, 0) + shift[:, None]
    assert (got - expected).abs().max() <= LATTICE8.eps / 2 + 1e-9


@pytest.mark.parametrize("schedule", ["static", "edge_drop"])
def test_doubly_stochastic_compressed_mixing_keeps_the_mean_up_to_the_coding_error(
    schedule: str,
) -> None:
    """``mean_i sum_j W_ij x_hat_ij - mean_j x_j = (1/n) sum_i sum_{j != i} W_ij
    (x_hat_ij - x_j)``, at most ``max_i (1 - W_ii) eps / 2`` a coordinate."""
    comm = ring_comm(schedule=schedule)
    x = near_points(N, 400, spread=0.05, seed=3)
    for t in range(10):
        W = comm.topology.weights(t)
        torch.testing.assert_close(W.sum(0), torch.ones(N, dtype=torch.float64))
        bound = float((1 - W.diagonal()).max()) * LATTICE8.eps / 2
        new = Compressed(comm, LATTICE8).mix(x, t)
        drift = (new.mean(0) - x.mean(0)).abs().max()
        assert drift <= bound + 1e-12
        plain_drift = (comm.mix(x, t).mean(0) - x.mean(0)).abs().max()
        assert plain_drift < 1e-12
        x = new


def test_mix_bytes_are_the_encoded_payloads_one_message_per_neighbour() -> None:
    comm = ring_comm()
    d = 300
    x = near_points(N, d, spread=0.05).float()
    comm = SimCommunicator(comm.topology, CPU, torch.float32)
    counts = {}
    for name, compressor in (("none", None), ("fp16", HalfPrecision()), ("lattice", LATTICE8)):
        (comm if compressor is None else Compressed(comm, compressor)).mix(x, 0)
        counts[name] = comm.traffic.reset()
    for messages, _, _ in counts.values():
        assert messages.tolist() == [2] * N  # a ring: two neighbours each
    assert counts["none"][1].tolist() == [2 * 4 * d] * N
    assert (counts["fp16"][1] * 2 == counts["none"][1]).all()  # exactly half of fp32
    assert (counts["lattice"][1] * 4 == counts["none"][1]).all()  # 1 byte a coordinate


def test_a_stochastic_mix_is_reproducible_from_its_generator() -> None:
    comm = ring_comm()
    x = near_points(N, 100, spread=0.05)

    def mix(seed: int | None) -> torch.Tensor:
        codes = None if seed is None else torch.Generator().manual_seed(seed)
        return comm.start_mix(x, 0, codec=Codec(QSGD(bits=4), codes)).wait()

    first, again, other = mix(5), mix(5), mix(6)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    with pytest.raises(ConfigError, match="never uses the global generator"):
        mix(None)


# --- the compressed mean --------------------------------------------------------------


def test_compressed_mean_is_an_all_gather_of_the_payloads() -> None:
    """Every agent gets ``(1/n) sum_j decode(p_j, x_i)``: with the lattice quantiser
    within its guarantee that is the same for all, within ``eps/2`` of the true mean;
    bytes: ``n - 1`` payloads an agent."""
    comm = ring_comm()
    d = 200
    x = near_points(N, d, spread=0.06, seed=4)
    got = Compressed(comm, LATTICE8).mean(x)
    messages, nbytes, _ = comm.traffic.reset()
    assert torch.equal(got, got[:1].expand_as(got))  # every agent holds the same mean
    assert (got[0] - x.mean(0)).abs().max() <= LATTICE8.eps / 2 + 1e-12
    assert messages.tolist() == [N - 1] * N
    assert nbytes.tolist() == [(N - 1) * d] * N  # one byte a coordinate, n - 1 payloads
    Compressed(comm, HalfPrecision()).mean(x)
    assert comm.traffic.reset()[1].tolist() == [(N - 1) * 2 * d] * N


def test_compressed_mean_decodes_against_each_receivers_reference() -> None:
    """Rows ``q eps`` apart decode to the receiver's side: agents then disagree, as the
    lattice quantiser's guarantee says they may (it holds within the radius only)."""
    comm = ring_comm()
    x = near_points(N, 20, spread=0.001)
    x[0] += 0.256
    got = Compressed(comm, LATTICE8).mean(x)
    assert (got[0] - got[1]).abs().min() > 0.2  # agent 0 sees everyone near itself


# --- algorithms -----------------------------------------------------------------------


def quadratic(shards, algorithm, rounds: int):
    data = regression_data()
    problem = least_squares_problem(data)
    topology = build_topology("ring", N)
    job = sim_job(problem, shards, topology, algorithm, rounds=rounds)
    result = SimEngine().run(job, RunFolder(None))
    return result, least_squares_optimum(data, shards), data


def rounding_bound(data, lr: float, eps: float) -> float:
    """``sqrt(d) (1 - W_ii) (eps / 2) / (lr lambda_min(H))`` on a Metropolis ring
    (``W_ii = 1/3``): gradient descent on the quadratic plus a perturbation of at most
    ``(1 - W_ii) eps / 2`` a coordinate each round (the decoded neighbours' error)
    ends within ``|perturbation|_2 / (lr lambda_min)`` of the optimum."""
    a = torch.cat([data.x_train, torch.ones(len(data.x_train), 1, dtype=torch.float64)], 1)
    lam = float(torch.linalg.eigvalsh(a.T @ a / len(a))[0])
    return math.sqrt(a.shape[1]) * (2 / 3) * (eps / 2) / (lr * lam)


@pytest.mark.parametrize(("lr", "eps"), [(0.1, 1e-3), (0.1, 1e-4)])
def test_dpsgd_with_an_8bit_lattice_reaches_the_optimum_within_the_rounding_bound(
    lr: float, eps: float
) -> None:
    """Every agent has the whole data set: plain D-PSGD is exact (1e-8); with an 8-bit
    lattice every agent ends within :func:`rounding_bound` of the optimum (1.1e-2 at
    eps = 1e-3, 1.1e-3 at 1e-4) for an eighth of the bytes (float64 rows)."""
    shards = [torch.arange(120)] * N
    plain, opt, data = quadratic(shards, DPSGD(lr=lr), rounds=1500)
    packed, _, _ = quadratic(shards, DPSGD(lr=lr, compressor=Lattice.with_bits(8, eps)), 1500)
    assert (plain.x - opt).norm(dim=1).max() < 1e-8
    err = float((packed.x - opt).norm(dim=1).max())
    assert err <= rounding_bound(data, lr, eps)
    assert err > 1e-6  # the rounding did move it
    assert packed.records[-1]["bytes_total"] * 8 == plain.records[-1]["bytes_total"]  # float64


def test_dpsgd_with_an_8bit_lattice_on_different_shards() -> None:
    """Different data per agent: D-PSGD's own O(lr) bias plus the rounding bound. The
    step keeps neighbours within the radius (0.1275); at lr=0.05 they drift apart and
    decode wrapped (0.15 from the optimum)."""
    shards = iid_shards(120, N)
    lr, eps = 0.02, 1e-3
    plain, opt, data = quadratic(shards, DPSGD(lr=lr), rounds=2000)
    packed, _, _ = quadratic(shards, DPSGD(lr=lr, compressor=Lattice.with_bits(8, eps)), 2000)
    bias = float((plain.x - opt).norm(dim=1).max())
    assert bias < 0.02
    assert float((packed.x - opt).norm(dim=1).max()) <= bias + rounding_bound(data, lr, eps)


def test_local_sgd_with_a_lattice_mean_reaches_the_optimum() -> None:
    shards = [torch.arange(120)] * N
    result, opt, _ = quadratic(
        shards, LocalSGD(lr=0.1, tau=4, compressor=Lattice.with_bits(8)), 1500
    )
    assert (result.x - opt).norm(dim=1).max() < 0.01


class SpyComm(SimCommunicator):
    """Records what each compressed mean sent (decoded, as a receiver sees it)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[torch.Tensor] = []

    def start_mean(self, x, *, codec=None):
        if codec is not None:
            generator, compressor = codec.generator, codec.compressor
            state = None if generator is None else generator.get_state()
            replay = None if state is None else torch.Generator().set_state(state)
            self.sent.append(compressor.decode(compressor.encode(x, generator=replay), x))
        return super().start_mean(x, codec=codec)


@pytest.mark.parametrize("compressor", [TopK(k=2), QSGD(bits=2), HalfPrecision(torch.bfloat16)])
def test_error_feedback_invariant_inside_allreduce(compressor) -> None:
    """Every round: what was sent + the new residual = the gradient + the old residual,
    the residual is kept per agent in the state, and the agents stay identical."""
    data = regression_data()
    problem = least_squares_problem(data)
    topology = build_topology("ring", N)
    comm = SpyComm(topology, CPU, torch.float64)
    oracle = problem.oracle(iid_shards(120, N), range(N), batch_size=0, seed=0)
    algo = AllReduceSGD(lr=0.1, compressor=compressor, error_feedback=True)
    talk = declared(comm, algo, seed=3)
    assert isinstance(talk, ErrorFeedback)
    state: SGDRunState = algo.init(torch.zeros(N, problem.dim, dtype=torch.float64), oracle, talk)
    assert talk.residual is None  # nothing dropped yet: the first message carries no residual
    moved = 0.0
    for t in range(30):
        _, g = oracle.grad(state.x)  # full batch: the gradient the step takes
        old = torch.zeros_like(g) if talk.residual is None else talk.residual
        state, _ = algo.step(state, t, oracle, talk.at(t))
        new = talk.residual
        torch.testing.assert_close(comm.sent[-1] + new, g + old, rtol=0, atol=1e-12)
        assert torch.equal(state.x, state.x[:1].expand_as(state.x))
        moved = max(moved, float(new.abs().max()))
    assert moved > 1e-3  # compression dropped something, and it was carried


def test_allreduce_without_error_feedback_keeps_no_residual() -> None:
    shards = [torch.arange(120)] * N
    result, opt, _ = quadratic(
        shards, AllReduceSGD(lr=0.1, compressor=QSGD(bits=8), error_feedback=False), 600
    )
    assert (result.x - opt).norm(dim=1).max() < 0.05
    algo = AllReduceSGD(lr=0.1, compressor=QSGD(bits=8), error_feedback=False)
    problem = least_squares_problem(regression_data())
    oracle = problem.oracle(iid_shards(120, N), range(N), batch_size=0, seed=0)
    x0 = torch.zeros(N, problem.dim, dtype=torch.float64)
    talk = declared(ring_comm(), algo, seed=0)
    assert isinstance(talk, Compressed) and not isinstance(talk, ErrorFeedback)
    algo.init(x0, oracle, talk)
    assert talk.state_dict() is None  # no residual to keep


def test_allreduce_topk_error_feedback_removes_most_of_the_bias() -> None:
    """Different data per agent; top-k keeps 2 of 6 coordinates of each gradient. Without
    error feedback the dropped coordinates never arrive and the fixed point is off the
    optimum (3.8e-2 after 1000 rounds); with it they arrive later (3.6e-3). Full batches
    and a deterministic compressor: these figures are reproducible."""
    shards = iid_shards(120, N)
    with_ef, opt, _ = quadratic(shards, AllReduceSGD(lr=0.1, compressor=TopK(k=2)), 1000)
    without, _, _ = quadratic(
        shards, AllReduceSGD(lr=0.1, compressor=TopK(k=2), error_feedback=False), 1000
    )
    assert (with_ef.x - opt).norm(dim=1).max() < 0.01
    assert (without.x - opt).norm(dim=1).max() > 0.03


@pytest.mark.parametrize(("eps", "close"), [(1e-4, True), (1e-5, False)])
def test_gradient_tracking_with_a_16bit_lattice(eps: float, close: bool) -> None:
    """Both exchanges compressed. With a radius (``(q - 1) eps / 2``) of 3.3 the trackers
    decode within ``eps/2``: the optimum to 1e-2 and the tracking invariant to 1e-2
    (1.5e-3 and 1.4e-3 measured; exact without compression). With a radius of 0.33 the
    first trackers (the local gradients) are too far apart and decode wrapped."""
    shards = iid_shards(120, N)
    result, opt, _ = quadratic(
        shards, GradientTracking(lr=0.05, compressor=Lattice.with_bits(16, eps)), 3000
    )
    err = float((result.x - opt).norm(dim=1).max())
    if close:
        assert err < 0.01
        assert result.records[-1]["tracking_error"] < 0.01
    else:
        assert err > 0.1


# --- configuration and byte counts of whole runs ---------------------------------------

SMALL = {
    "dataset": "digits",
    "agents": 4,
    "hidden": [8],
    "rounds": 4,
    "batch_size": 8,
    "eval_every": 4,
    "progress": False,
}


@pytest.mark.parametrize("name", ["dpsgd", "gradient_tracking", "local_sgd"])
def test_fp16_runs_send_exactly_half_the_bytes_of_fp32(name: str) -> None:
    keys = SMALL | {"algorithm": name} | ({"tau": 2} if name == "local_sgd" else {})
    plain = run(load_config(keys))
    half = run(load_config(keys | {"quantizer": "fp16"}))
    last, packed = plain.records[-1], half.records[-1]
    if name == "local_sgd":  # the mean becomes an all-gather: n - 1 payloads an agent
        n, d, averagings = 4, plain.x.shape[1], SMALL["rounds"] // 2
        assert packed["messages_total"] == averagings * n * (n - 1)
        assert packed["bytes_total"] == averagings * n * (n - 1) * 2 * d
    else:  # the same messages, each of 2 bytes a coordinate instead of 4
        assert packed["messages_total"] == last["messages_total"]
        assert packed["bytes_total"] * 2 == last["bytes_total"]


def test_config_builds_the_compressors() -> None:
    cfg = load_config({"algorithm": "allreduce", "quantizer": "qsgd", "bits": 4, "seed": 7})
    algo = build_algorithm(cfg)
    assert isinstance(algo, AllReduceSGD)
    assert algo.compressor == QSGD(bits=4) and algo.error_feedback
    assert build_algorithm(load_config({"algorithm": "dpsgd"})).compressor is None
    lattice = build_algorithm(
        load_config({"algorithm": "dpsgd", "quantizer": "lattice", "lattice_eps": 1e-4})
    )
    assert lattice.compressor == Lattice.with_bits(8, 1e-4)
    no_ef = load_config({"algorithm": "allreduce", "quantizer": "topk", "error_feedback": False})
    assert not build_algorithm(no_ef).error_feedback


@pytest.mark.parametrize("name", ["next", "dgd", "adpsgd"])
def test_methods_that_send_uncompressed_refuse_a_quantizer(name: str) -> None:
    with pytest.raises(ConfigError, match=f"algorithm={name} sends its models uncompressed"):
        load_config({"algorithm": name, "quantizer": "lattice"})


@pytest.mark.parametrize("name", ["dpsgd", "local_sgd", "gradient_tracking"])
def test_methods_that_send_models_refuse_top_k(name: str) -> None:
    with pytest.raises(ConfigError, match="meant for gradients under error feedback"):
        build_algorithm(load_config({"algorithm": name, "quantizer": "topk"}))


@pytest.mark.parametrize(
    "case",
    [
        {"algorithm": "allreduce", "quantizer": "qsgd", "bits": 6, "error_feedback": True},
        {"algorithm": "dpsgd", "quantizer": "lattice", "bits": 8},
    ],
    ids=["allreduce_qsgd_ef", "dpsgd_lattice8"],
)
def test_a_resumed_compressed_run_equals_the_uninterrupted_one(case: dict, tmp_path) -> None:
    """The residual is checkpointed with the state and the random codes depend only on
    ``(seed, agent, round)``: resuming from round 10 gives the same bits at round 20."""
    values = SMALL | case | {"eval_every": 10, "checkpoint_every": 10}
    whole = run(load_config(values | {"rounds": 20}), tmp_path / "whole")
    run(load_config(values | {"rounds": 15}), tmp_path / "cut")
    checkpoint = Checkpoint.load(tmp_path / "cut")
    if case["algorithm"] == "allreduce":
        assert checkpoint.comm is not None and checkpoint.comm["residual"].abs().max() > 0
    resumed = resume(tmp_path / "cut", {"rounds": "20"})
    assert torch.equal(resumed.x, whole.x)
    assert resumed.records[-1]["bytes_total"] == whole.records[-1]["bytes_total"]
