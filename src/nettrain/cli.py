"""The ``nettrain`` command line.

    nettrain run [CONFIG.toml] [key=value ...] [--out DIR]
    nettrain run --resume DIR [key=value ...]
    nettrain compare [CONFIG.toml] [key=value ...] [--algorithms a,b,...] [--out DIR]
    nettrain topology KIND --agents N [--weights W] [--schedule S] [--json]
    nettrain keys [--markdown]
    nettrain reproduce NAME [--quick] [--seed S] [--out DIR]

Exit codes: 0 success, 1 the run diverged (``reproduce``: a claim does not hold), 2 bad
input (unknown key, bad value, missing data, disconnected graph, ...), with a message
that says how to fix it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from nettrain.config import (
    SECTIONS,
    RunConfig,
    coerce,
    describe_keys,
    load_config,
    parse_overrides,
)
from nettrain.errors import ConfigError, DataError, DivergenceError, NettrainError, TopologyError
from nettrain.report.tables import summary_table
from nettrain.version import __version__

BASELINES = ("allreduce", "local_sgd", "dpsgd", "gradient_tracking")


def _config(items: Sequence[str]) -> RunConfig:
    """First item may be a config file; the rest are key=value overrides."""
    source = None
    if items and "=" not in items[0]:
        source, items = items[0], items[1:]
    return load_config(source, parse_overrides(items))


def _default_out(kind: str) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}"


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from nettrain.experiment import run

    if args.resume:
        from nettrain.experiment import resume, resumed_config

        if args.items and "=" not in args.items[0]:
            raise ConfigError("--resume DIR takes key=value overrides, not a config file")
        cfg = resumed_config(Path(args.resume), parse_overrides(args.items))
        if cfg.engine == "distributed" and os.environ.get("RANK") is None:
            extra = ["--resume", args.resume, *args.items]
            return launch_torchrun(cfg.nproc or cfg.world_size, cfg, extra)
        result = resume(args.resume, parse_overrides(args.items))
        if os.environ.get("RANK") not in (None, "0"):
            return 0
        console.print(summary_table([result.summary], title=result.summary["label"]))
        console.print(f"run folder: {args.resume}")
        return 0
    cfg = _config(args.items)
    out = Path(args.out) if args.out else _default_out(cfg.algorithm)
    rank = os.environ.get("RANK")
    if cfg.engine == "distributed" and rank is None:
        return launch_torchrun(cfg.nproc or cfg.world_size, cfg, [*args.items, "--out", str(out)])
    result = run(cfg, out)
    if rank not in (None, "0"):
        return 0  # rank 0 reports for everyone
    console.print(summary_table([result.summary], title=result.summary["label"]))
    console.print(f"run folder: {out}")
    return 0


def launch_torchrun(nproc: int, cfg: RunConfig, arguments: Sequence[str]) -> int:
    """Run ``nettrain run ARGUMENTS`` in ``nproc`` local processes under torchrun.

    One thread per process (``OMP_NUM_THREADS=1``): the agents share this machine's
    cores. Returns torchrun's exit status (non-zero when any rank failed).
    """
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--master-addr",
        cfg.master_addr,
        "--master-port",
        str(cfg.master_port),
        "-m",
        "nettrain",
        "run",
        *arguments,
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    return subprocess.run(command, env=env, check=False).returncode


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from nettrain.experiment import compare, comparison_configs, write_comparison
    from nettrain.recording import read_records

    algorithms = [a.strip() for a in args.algorithms.split(",") if a.strip()]
    source, shared, settings = _compare_items(args.items, algorithms)
    # every algorithm's config is validated before any run starts
    configs = comparison_configs(
        load_config(source, shared).to_dict() if source else shared, algorithms, settings
    )
    cfg = next(iter(configs.values()))
    out = Path(args.out) if args.out else _default_out("compare")
    if cfg.engine == "distributed" and os.environ.get("RANK") is None:
        summaries = []
        for k, (name, sub) in enumerate(configs.items()):
            # One torchrun per algorithm; a fresh port each, so no launch waits on the last.
            own = [f"{key}={value}" for key, value in settings.get(name, {}).items()]
            port = cfg.master_port + k
            items = [*args.items, *own, f"algorithm={name}", f"master_port={port}"]
            items = [i for i in items if i.partition("=")[0].rpartition(".")[0] not in algorithms]
            code = launch_torchrun(
                sub.nproc or sub.world_size, sub, [*items, "--out", str(out / name)]
            )
            if code != 0:
                console.print(f"the run of {name} failed (torchrun exit code {code})")
                return code
            summaries.append(json.loads((out / name / "summary.json").read_text()))
        curves = {name: read_records(out / name) for name in configs}
        write_comparison(cfg, summaries, curves, out)
    else:
        summaries = compare(cfg.to_dict(), algorithms, out, settings=settings)
    title = f"{cfg.dataset}: {cfg.agents} agents on {cfg.topology}, {cfg.rounds} rounds"
    console.print(summary_table(summaries, title=title))
    console.print(f"table: {out / 'summary.csv'}   plot: {out / 'compare.png'}")
    return 0


def _compare_items(
    items: Sequence[str], algorithms: Sequence[str]
) -> tuple[str | None, dict[str, str], dict[str, dict[str, str]]]:
    """The config file, the shared ``key=value`` items and each algorithm's own
    (``swarm.local_steps=2``)."""
    source = None
    if items and "=" not in items[0]:
        source, items = items[0], items[1:]
    shared: dict[str, str] = {}
    settings: dict[str, dict[str, str]] = {}
    for name, value in parse_overrides(items).items():
        scope, dot, key = name.rpartition(".")
        if dot and scope in algorithms:
            settings.setdefault(scope, {})[key] = value
        elif dot:
            raise ConfigError(
                f"{name}={value}: {scope!r} is not one of the compared algorithms "
                f"({', '.join(algorithms)}); scope a key to one of them as NAME.KEY=VALUE"
            )
        else:
            shared[name] = value
    return source, shared, settings


def cmd_topology(args: argparse.Namespace, console: Console) -> int:
    from nettrain.topology import build_topology, describe

    topo = build_topology(
        args.kind,
        args.agents,
        seed=args.seed,
        weights=args.weights,
        schedule=args.schedule,
        drop_prob=args.drop_prob,
        degree=args.degree,
    )
    info = describe(topo)
    if args.json:
        print(json.dumps(info, default=str))
        return 0
    table = Table(title=f"{args.kind} topology", show_header=False)
    for k, v in info.items():
        table.add_row(k, f"{v:.6g}" if isinstance(v, float) else str(v))
    console.print(table)
    return 0


def cmd_keys(args: argparse.Namespace, console: Console) -> int:
    rows = describe_keys()
    sections = dict.fromkeys(r["section"] for r in rows)
    if args.markdown:
        for section in sections:
            doc = (SECTIONS[section].__doc__ or "").splitlines()[0]
            print(f"\n## `[{section}]`\n\n{doc} In Python: `cfg.{section}.KEY`.\n")
            print("| key | type | default | allowed | meaning |\n|---|---|---|---|---|")
            for r in rows:
                if r["section"] == section:
                    print(
                        f"| `{r['key']}` | {r['type']} | `{r['default']}` | {r['choices']} "
                        f"| {r['help']} |"
                    )
        return 0
    table = Table(title="config keys (key=value on the command line, or in a TOML file)")
    for col in ("section", "key", "type", "default", "choices", "help"):
        table.add_column(col)
    for r in rows:
        table.add_row(*(r[c] for c in ("section", "key", "type", "default", "choices", "help")))
    console.print(table)
    return 0


def cmd_reproduce(args: argparse.Namespace, console: Console) -> int:
    from nettrain.reproduce import EXPERIMENTS
    from nettrain.reproduce.claims import claims_table, write_claims
    from nettrain.reproduce.runner import Request

    overrides = parse_overrides(args.set)
    for name in overrides:
        coerce(name, overrides[name])  # an unknown key or bad value fails before any run
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    out = Path(args.out) if args.out else _default_out(f"reproduce-{args.name}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ask = Request(out, args.quick, args.seed, console, overrides, args.jobs)
    claims = EXPERIMENTS[args.name](ask)
    write_claims(claims, out / "claims.json")
    console.print(claims_table(claims))
    held = sum(c.holds for c in claims)
    console.print(
        f"{held} of {len(claims)} claims hold ({time.perf_counter() - start:.0f} s); "
        f"claims: {out / 'claims.json'}"
    )
    return 0 if held == len(claims) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nettrain", description="Train neural networks across a network of agents."
    )
    parser.add_argument(
        "--version", action="version", version=f"nettrain {__version__} (torch {torch.__version__})"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    items_help = "optional CONFIG.toml, then key=value overrides (`nettrain keys` lists keys)"

    p = sub.add_parser("run", help="run one configuration and write a run folder")
    p.add_argument("items", nargs="*", help=items_help)
    p.add_argument("--out", help="run folder (default runs/<time>-<algorithm>)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint.pt")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("compare", help="run several algorithms on one problem")
    p.add_argument("items", nargs="*", help=items_help)
    p.add_argument("--algorithms", default=",".join(BASELINES), help="comma-separated names")
    p.add_argument("--out", help="folder for the runs, summary.csv and compare.png")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("topology", help="describe a topology: degrees, spectral gap, checks")
    p.add_argument("kind")
    p.add_argument("--agents", type=int, required=True)
    p.add_argument("--weights", default="metropolis")
    p.add_argument("--schedule", default="static")
    p.add_argument("--drop-prob", type=float, default=0.0)
    p.add_argument("--degree", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_topology)

    p = sub.add_parser("keys", help="list every config key with its default and meaning")
    p.add_argument("--markdown", action="store_true")
    p.set_defaults(func=cmd_keys)

    from nettrain.reproduce import EXPERIMENTS

    p = sub.add_parser("reproduce", help="check a paper's claims at small scale (claims.json)")
    p.add_argument("name", choices=sorted(EXPERIMENTS))
    p.add_argument("--quick", action="store_true", help="the short version (minutes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="folder for runs, plots, summary.csv and claims.json")
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each in its own process with the cores shared out (default 1); "
        "runs already finished in --out are kept",
    )
    p.add_argument(
        "--set",
        nargs="*",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="override every run's config, e.g. --set model=cnn device=cuda",
    )
    p.set_defaults(func=cmd_reproduce)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Piped output (logs, CI) gets 120 columns instead of rich's default 80.
    console = Console(width=None if sys.stdout.isatty() else 120)
    try:
        return args.func(args, console)
    except (ConfigError, DataError, TopologyError) as err:
        print(f"nettrain: error: {err}", file=sys.stderr)
        return 2
    except DivergenceError as err:
        print(f"nettrain: {err}", file=sys.stderr)
        return 1
    except NettrainError as err:  # a failed run: a dead peer or worker process
        print(f"nettrain: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
