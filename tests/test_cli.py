"""The command line: run folders, compare, topology, keys and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nettrain.cli import main
from nettrain.config import FIELDS
from nettrain.errors import ConfigError

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
    assert [r["round"] for r in records] == [0, 10, 20]
    assert records[-1]["bytes_total"] > records[1]["bytes_total"] > records[0]["bytes_total"] == 0
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
        (["reproduce", "swarm", "--seeds", "0"], "--seeds must be >= 1, got 0"),
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


def test_a_finished_run_is_not_overwritten_without_force(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["run", *FAST, "rounds=10", "--out", str(out)]
    assert main(args) == 0
    first = (out / "summary.json").read_text()
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{out}: already holds a finished run" in err
    assert "--force" in err and f"--resume {out}" in err
    assert (out / "summary.json").read_text() == first  # untouched
    assert main([*args, "seed=3", "--force"]) == 0
    assert json.loads((out / "config.json").read_text())["seed"] == 3


def test_compare_does_not_overwrite_finished_runs_without_force(tmp_path: Path, capsys) -> None:
    """The same config again keeps the finished run; another is refused without --force."""
    args = ["compare", *FAST, "rounds=10", "--algorithms", "dpsgd", "--out", str(tmp_path)]
    assert main(args) == 0
    first = (tmp_path / "dpsgd" / "summary.json").read_text()
    capsys.readouterr()
    assert main(args) == 0
    assert f"{tmp_path / 'dpsgd'}: kept" in capsys.readouterr().out
    assert (tmp_path / "dpsgd" / "summary.json").read_text() == first  # not run again
    assert main([*args, "seed=3"]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'dpsgd'}: finished runs of another config" in err and "--force" in err
    assert (tmp_path / "dpsgd" / "summary.json").read_text() == first  # untouched
    assert main([*args, "seed=3", "--force"]) == 0
    assert json.loads((tmp_path / "dpsgd" / "config.json").read_text())["seed"] == 3


def test_reproduce_refuses_finished_runs_of_another_config(tmp_path: Path, capsys) -> None:
    """A run folder of the experiment that holds another config's finished run."""
    folder = tmp_path / "somewhere"
    assert main(["run", *FAST, "rounds=10", "--out", str(folder)]) == 0
    from nettrain.recording import refuse_finished

    with pytest.raises(ConfigError, match=r"somewhere: runs of X, which .* overwrite it, or"):
        refuse_finished([folder], force=False, what="runs of X")
    refuse_finished([folder], force=True)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--rounds", "50", "agents=4"], "use rounds=50"),
        (["run", "agents=4", "--rounds=50"], "use rounds=50"),
        (["compare", "--drop-prob", "0.3"], "use drop_prob=0.3"),
        (["reproduce", "swarm", "--rounds", "5"], "use --set rounds=5"),
        (["run", "rounds", "50"], "expected key=value or a config file (.toml or .json)"),
        (["run", "--colour"], "unrecognized arguments: --colour"),
        (["reproduce", "nope"], "no experiment 'nope' to reproduce; choose one of easgd"),
    ],
)
def test_options_that_are_keys_are_told_the_key_value_form(
    args: list[str], message: str, capsys
) -> None:
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_the_config_file_may_stand_anywhere(tmp_path: Path) -> None:
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"algorithm": "local_sgd", "tau": 2, "rounds": 4}))
    out = tmp_path / "r"
    items = ["agents=4", "eval_every=2", str(cfg), "rounds=6", "progress=false", "hidden=8"]
    assert main(["run", *items, "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["algorithm"], saved["tau"], saved["rounds"]) == ("local_sgd", 2, 6)


def test_yaml_and_two_config_files_are_refused(tmp_path: Path, capsys) -> None:
    yaml = tmp_path / "c.yaml"
    yaml.write_text("agents: 4\n")
    assert main(["run", "agents=4", str(yaml)]) == 2
    assert "reads only TOML (.toml) and JSON (.json) config files" in capsys.readouterr().err
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text("agents = 4\n")
    b.write_text("rounds = 4\n")
    assert main(["run", str(a), str(b)]) == 2
    assert "one config file at most" in capsys.readouterr().err


def test_topology_help_lists_kinds_weights_and_schedules(capsys) -> None:
    from nettrain.topology import GRAPHS, SCHEDULES, WEIGHTS

    with pytest.raises(SystemExit) as done:
        main(["topology", "--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    for name in (*GRAPHS, *WEIGHTS, *SCHEDULES):
        assert name in text, name


def test_help_imports_neither_torch_nor_matplotlib_nor_the_experiment() -> None:
    """`nettrain --help` answers before torch would have loaded (benchmarks/cli_startup.py
    times it)."""
    code = (
        "import sys\n"
        "from nettrain.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = ('torch', 'matplotlib', 'nettrain.experiment', 'nettrain.config')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    src = str(Path(__file__).parents[1] / "src")
    env = os.environ | {"PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]"
