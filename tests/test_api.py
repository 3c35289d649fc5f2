"""The Python API with the user's own objects: model, data, loss, algorithm; the Result
and run folders that turn flat vectors back into the user's module."""

from __future__ import annotations

import copy
import json
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

import nettrain
from nettrain.algorithms import DPSGD
from nettrain.cli import main
from nettrain.data import from_tensors
from nettrain.errors import ConfigError

CONFIG = {"algorithm": "dpsgd", "agents": 4, "topology": "ring", "rounds": 20, "eval_every": 10}
CONFIG |= {"progress": False, "batch_size": 16}


class Net(nn.Module):
    """Images in, BatchNorm and dropout inside."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(4 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.head(self.drop(x.flatten(1)))


@pytest.fixture(scope="module")
def digits() -> nettrain.data.Dataset:
    """scikit-learn's digits as (N, 1, 8, 8) images with int32 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16
    y = torch.tensor(d.target, dtype=torch.int32)
    return from_tensors(x[:1400], y[:1400], x[1400:], y[1400:])


def accuracy(net: nn.Module, data: nettrain.data.Dataset) -> float:
    with torch.no_grad():
        return (net(data.x_test).argmax(1) == data.y_test).float().mean().item()


def test_own_model_and_data_give_back_own_module(digits, tmp_path: Path) -> None:
    result = nettrain.run(CONFIG, model=Net(), data=digits, out=tmp_path / "a")
    net = result.mean_model()
    assert isinstance(net, Net) and not net.training
    assert accuracy(net, digits) == pytest.approx(result.records[-1]["test_accuracy"], abs=1e-6)
    assert accuracy(net, digits) > 0.5  # learnt something in 20 rounds (chance: 0.1)
    own = result.agent_model(3)
    assert torch.equal(torch.cat([p.flatten() for p in own.parameters()]), result.x[3])
    assert torch.equal(own.bn.running_mean, result.buffers["bn.running_mean"][3])
    assert not torch.equal(own.bn.running_mean, result.buffers["bn.running_mean"][0])

    nettrain.run(CONFIG, model=Net(), data=digits, out=tmp_path / "b")
    a, b = (torch.load(tmp_path / k / "final.pt", weights_only=True) for k in "ab")
    assert torch.equal(a, b)  # a rerun is bit for bit the same, dropout included

    loaded = nettrain.load(tmp_path / "a", model=Net())
    assert torch.equal(loaded.x, result.x) and loaded.records == result.records
    assert accuracy(loaded.mean_model(), digits) == accuracy(net, digits)

    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert config["model"]["class"].endswith("test_api.Net")
    assert config["model"]["parameters"] == sum(p.numel() for p in Net().parameters())
    assert config["dataset"]["shapes"]["x_train"] == [1400, 1, 8, 8]
    assert len(config["dataset"]["sha256"]) == 16
    assert config["provenance"]["torch_version"] == torch.__version__
    assert config["provenance"]["nettrain_version"] == nettrain.__version__
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["model"] == "Net" and summary["torch_version"] == torch.__version__


def test_the_model_given_is_left_as_it_is(digits) -> None:
    net = Net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    nettrain.run(CONFIG | {"rounds": 2}, model=net, data=digits)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert isinstance(net.drop, nn.Dropout)


def test_init_model_starts_from_the_objects_parameters(digits) -> None:
    """init=seed draws the start under the seed whatever the object holds; init=model
    starts from the object's own parameters."""
    short = CONFIG | {"rounds": 2}
    a, b = Net(), Net()  # two different draws of torch's global generator
    seeded = [nettrain.run(short, model=m, data=digits).x for m in (a, b)]
    own = [nettrain.run(short | {"init": "model"}, model=m, data=digits).x for m in (a, b)]
    assert torch.equal(seeded[0], seeded[1]) and not torch.equal(own[0], own[1])
    same = nettrain.run(short | {"init": "model"}, model=copy.deepcopy(a), data=digits).x
    assert torch.equal(same, own[0])


def test_resume_with_buffers_and_dropout_is_bit_for_bit(digits, tmp_path: Path) -> None:
    whole = nettrain.run(CONFIG, model=Net(), data=digits)
    nettrain.run(
        CONFIG | {"rounds": 10, "checkpoint_every": 10}, tmp_path, model=Net(), data=digits
    )
    with pytest.raises(ConfigError, match="resume it from Python"):
        nettrain.resume(tmp_path, {"rounds": 20})
    resumed = nettrain.resume(tmp_path, {"rounds": 20}, model=Net(), data=digits)
    assert torch.equal(resumed.x, whole.x)
    assert all(torch.equal(resumed.buffers[k], v) for k, v in whole.buffers.items())


def test_buffers_local_evaluates_each_agent_with_its_own(digits) -> None:
    mix = nettrain.run(CONFIG, model=Net(), data=digits).records[-1]
    local = nettrain.run(CONFIG | {"buffers": "local"}, model=Net(), data=digits).records[-1]
    assert mix["test_accuracy"] == local["test_accuracy"]  # the mean model is the same
    # every agent's own accuracy: the mean (a minimum is one agent's, and may coincide)
    assert mix["agent_test_accuracy_mean"] != local["agent_test_accuracy_mean"]


def test_a_torch_loss_gives_what_the_built_in_gives(digits) -> None:
    small = CONFIG | {"rounds": 5}
    built_in = nettrain.run(small, model=Net(), data=digits)
    functional = nettrain.run(small, model=Net(), data=digits, loss=nn.functional.cross_entropy)
    module = nettrain.run(small, model=Net(), data=digits, loss=nn.CrossEntropyLoss())
    mean_only = nettrain.run(  # no reduction argument: evaluated a sample at a time
        small, model=Net(), data=digits, loss=lambda out, y: nn.functional.cross_entropy(out, y)
    )
    for other in (functional, module, mean_only):
        torch.testing.assert_close(other.x, built_in.x)


def test_an_algorithm_object_runs_as_its_name(digits) -> None:
    by_name = nettrain.run(CONFIG | {"lr": 0.05, "momentum": 0.5}, model=Net(), data=digits)
    by_object = nettrain.run(
        CONFIG, model=Net(), data=digits, algorithm=DPSGD(lr=0.05, momentum=0.5)
    )
    assert torch.equal(by_name.x, by_object.x)
    with pytest.raises(ConfigError, match="nettrain method object"):
        nettrain.run(CONFIG, algorithm="dpsgd")


HALVING = '''
from dataclasses import dataclass
import torch
from nettrain.algorithms import Algorithm

@dataclass(frozen=True)
class Mixing(Algorithm):
    """x <- W x - lr g: D-PSGD written outside the package."""
    lr: float = 0.1

    def init(self, x0, oracle, comm):
        return Plain(x0)

    def step(self, state, t, oracle, comm):
        loss, g = oracle.grad(state.x)
        return Plain(comm.mix(state.x, t) - self.lr * g), loss

@dataclass(frozen=True)
class Plain:
    x: torch.Tensor
'''


def test_an_outside_class_runs_from_the_command_line(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "mymethods.py").write_text(textwrap.dedent(HALVING))
    monkeypatch.chdir(tmp_path)
    args = ["rounds=10", "agents=4", "lr=0.05", "progress=false", "eval_every=10"]
    assert main(["run", "algorithm=mymethods:Mixing", *args, "--out", "own"]) == 0
    assert main(["run", "algorithm=dpsgd", *args, "--out", "builtin"]) == 0
    own, builtin = (
        torch.load(tmp_path / k / "final.pt", weights_only=True) for k in ("own", "builtin")
    )
    torch.testing.assert_close(own, builtin)  # lr=0.05 reached the class's field
    config = json.loads((tmp_path / "own" / "config.json").read_text())
    assert config["algorithm"] == "mymethods:Mixing"


def test_entry_points_and_bad_names(monkeypatch) -> None:
    import nettrain.algorithms as registry

    class Point:
        name = "plugged"

        def load(self):
            return DPSGD

    class Found(list):
        def select(self, name):
            return [p for p in self if p.name == name]

    monkeypatch.setattr(registry, "entry_points", lambda group: Found([Point()]))
    assert registry.resolve("plugged") is DPSGD
    with pytest.raises(ConfigError, match=r"choose one of .*plugged"):
        registry.resolve("nonexistent")
    with pytest.raises(ConfigError, match="not a nettrain method"):
        registry.resolve("os:getcwd")
    with pytest.raises(ConfigError, match="cannot import module 'no_such_module'"):
        registry.resolve("no_such_module:X")


def test_version(capsys) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith(f"nettrain {nettrain.__version__}")


def test_compare_takes_the_same_objects(digits, tmp_path: Path) -> None:
    cfg = nettrain.load_config(overrides=CONFIG | {"rounds": 10})
    rows = nettrain.compare(cfg, ["dpsgd", "allreduce"], tmp_path, model=Net(), data=digits)
    assert [r["algorithm"] for r in rows] == ["dpsgd", "allreduce"]
    assert all(r["model"] == "Net" and r["dataset"] == "tensors" for r in rows)
    assert (tmp_path / "summary.csv").is_file() and (
        tmp_path / "allreduce" / "buffers.pt"
    ).is_file()


def test_a_method_off_the_graph_runs_whatever_the_graph_and_its_size(digits) -> None:
    """All-reduce never mixes along the graph: two agents run though no ring of two exists,
    and give what the complete graph gives; a graph its size does not fit (a hypercube of
    6) changes nothing either; one agent is plain SGD on its batches."""
    cfg = CONFIG | {"algorithm": "allreduce", "agents": 2, "lr": 0.1}
    on_ring = nettrain.run(cfg, data=digits).x
    assert torch.equal(on_ring, nettrain.run(cfg | {"topology": "complete"}, data=digits).x)
    six = cfg | {"agents": 6}
    cube = nettrain.run(six | {"topology": "hypercube"}, data=digits).x
    assert torch.equal(cube, nettrain.run(six, data=digits).x)
    alone = nettrain.run(cfg | {"agents": 1}, data=digits)
    assert alone.records[-1]["test_accuracy"] > alone.records[0]["test_accuracy"] + 0.2
    with pytest.raises(nettrain.errors.TopologyError, match="needs n >= 3"):
        nettrain.run(cfg | {"algorithm": "dpsgd"}, data=digits)
    with pytest.raises(nettrain.errors.TopologyError, match="hypercube"):
        nettrain.run(six | {"algorithm": "dpsgd", "topology": "hypercube"}, data=digits)
