"""The command line: run folders, compare, topology, keys and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from nettrain.cli import main
from nettrain.config import FIELDS

FAST = ["agents=4", "rounds=20", "eval_every=10", "progress=false", "hidden=8"]


def test_run_writes_a_complete_run_folder(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["run", *FAST, "algorithm=gradient_tracking", "--out", str(out)]) == 0
    for name in ("config.json", "metrics.jsonl", "summary.json", "final.pt", "plot.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    required = {
        *("algorithm", "engine", "agents", "topology", "rounds", "test_accuracy"),
        *("agent_test_accuracy_mean", "consensus_distance", "bytes_total", "messages_total"),
        *("virtual_time_s", "wall_time_s", "peak_memory_mb", "allocator"),
    }
    assert required <= set(summary)
    assert summary["algorithm"] == "gradient_tracking" and summary["agents"] == 4
    assert summary["peak_memory_mb"] > 0
    assert summary["allocator"] in ("retain", "system")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [10, 20]
    assert records[-1]["bytes_total"] > records[0]["bytes_total"] > 0
    assert "tracking_error" in records[-1]
    x = torch.load(out / "final.pt", weights_only=True)
    assert x.shape == (4, summary["params"])
    assert json.loads((out / "config.json").read_text())["rounds"] == 20
    assert "run folder:" in capsys.readouterr().out


def test_same_seed_same_final_parameters(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        seed = "seed=1" if name != "c" else "seed=2"
        args = ["run", *FAST, "algorithm=dpsgd", "schedule=edge_drop", "drop_prob=0.3", seed]
        assert main([*args, "--out", str(tmp_path / name)]) == 0
    a, b, c = (torch.load(tmp_path / n / "final.pt", weights_only=True) for n in "abc")
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_compare_writes_table_and_plot(tmp_path: Path) -> None:
    code = main(["compare", *FAST, "--algorithms", "allreduce,dpsgd", "--out", str(tmp_path)])
    assert code == 0
    lines = (tmp_path / "summary.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("label,algorithm")
    assert (tmp_path / "compare.png").stat().st_size > 10_000
    assert (tmp_path / "dpsgd" / "final.pt").is_file()


def test_config_file_and_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('algorithm = "local_sgd"\ntau = 2\nagents = 4\nrounds = 4\n')
    assert (
        main(
            [
                "run",
                str(cfg),
                "rounds=6",
                "eval_every=3",
                "progress=false",
                "--out",
                str(tmp_path / "r"),
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (saved["algorithm"], saved["tau"], saved["rounds"]) == ("local_sgd", 2, 6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "agnets=4"], "unknown config key 'agnets'; did you mean agents"),
        (["run", "topology=moebius"], "topology='moebius' is not allowed; choose one of ring"),
        (["run", "rounds=ten"], "rounds='ten' is not a valid int"),
        (["compare", "--algorithms", "dpsgd,sgd"], "algorithm='sgd' is not allowed"),
        (["run", "missing.toml"], "config file missing.toml does not exist"),
        (["topology", "hypercube", "--agents", "12"], "power of 2"),
        (["reproduce", "easgd", "--set", "colour=red"], "unknown config key 'colour'"),
        (["reproduce", "easgd", "--set", "lr"], "expected key=value, got 'lr'"),
        (["reproduce", "swarm", "--jobs", "0"], "--jobs must be >= 1, got 0"),
    ],
)
def test_bad_input_exits_2_naming_the_problem(args: list[str], message: str, capsys) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_block_async_refuses_parallel_runs(tmp_path: Path, capsys) -> None:
    """Its claims are wall-clock speed-ups: runs sharing the machine would skew them."""
    assert main(["reproduce", "block-async", "--jobs", "2", "--out", str(tmp_path)]) == 2
    assert "cannot share the machine: drop --jobs 2" in capsys.readouterr().err


def test_topology_json(capsys) -> None:
    assert main(["topology", "ring", "--agents", "16", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["agents"], info["edges"], info["min_degree"], info["max_degree"]) == (16, 16, 2, 2)
    assert info["doubly_stochastic"] is True
    assert 0 < info["spectral_gap"] < 0.1


def test_every_key_is_documented(capsys) -> None:
    assert main(["keys", "--markdown"]) == 0
    table = capsys.readouterr().out
    assert all(f"| `{name}` |" in table for name in FIELDS)
    assert all(f.metadata["help"] for f in FIELDS.values())
    doc = (Path(__file__).parents[1] / "docs" / "config.md").read_text()
    assert table.strip() in doc, (
        "docs/config.md is stale: regenerate with `nettrain keys --markdown`"
    )
