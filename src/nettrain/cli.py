"""The ``nettrain`` command line.

    nettrain run [CONFIG.toml] [key=value ...] [--out DIR] [--force]
    nettrain run --resume DIR [key=value ...]
    nettrain compare [CONFIG.toml] [key=value ...] [key=a,b,...] [--algorithms a,b,...]
                     [--jobs N] [--out DIR] [--force]
    nettrain topology KIND --agents N [--weights W] [--schedule S] [--json]
    nettrain keys [--markdown]
    nettrain reproduce NAME [--quick] [--seed S] [--seeds K] [--jobs N] [--out DIR]
                       [--force]
    nettrain report DIR [DIR ...] [--out report.html] [--title TEXT]
    nettrain calibrate [CONFIG.toml] [key=value ...] [--out profile.toml] [--processes P]
                       [--min-bytes B] [--max-bytes B] [--repeats R]

The config file (TOML or JSON) may stand anywhere among the ``key=value`` items; the
items after it override its keys. ``run`` never overwrites a folder that holds a
finished run (its ``summary.json``) unless ``--force`` says so. ``compare`` and
``reproduce`` keep a finished run of the same config in its folder (run them again
after an interruption and only the rest run) and refuse one of another config unless
``--force``.

``compare`` runs every combination of the values given as comma lists
(``topology=ring,torus seed=0,1,2``; the algorithms, ``--algorithms a,b`` or
``algorithm=a,b``, are one more axis), each in its own folder ``OUT/ALGORITHM`` or
``OUT/ALGORITHM/KEY=VALUE,...``; a key whose one value is itself a comma list
(``hidden``, ``tree_periods``, ``crash``, ``placement``) is swept in brackets,
``'hidden=[64],[64,32]'``. ``NAME.KEY=VALUE`` gives one algorithm a key of its own
(one value). Every config is validated before any run starts. When a key other than
the algorithm varies, ``aggregate.csv`` and the table printed hold the mean ± std over
seeds of each group of runs (see :mod:`nettrain.sweeps`).

``reproduce`` runs every configuration of the experiment for the seeds ``S, S+1, ...,
S+K-1`` (``--seeds K``, default 3 with ``--quick`` and 5 without), each seed's runs in
``DIR/seed-<s>/``; its tables give the mean ± std over the seeds and ``claims.json``
each claim's figures seed by seed. A claim is ``empirical`` or ``by_construction``
(reported, not counted): the command exits 0 only if every empirical claim holds.

Exit codes: 0 success, 1 the run diverged (``reproduce``: an empirical claim does not
hold), 2 bad input (unknown key, bad value, missing data, disconnected graph, a finished
run in ``--out``, ``--seeds 0``, ...), with a message that says how to fix it.

Only what the chosen command needs is imported (torch, matplotlib and the experiment
on first use), so ``nettrain --help`` answers at once (``benchmarks/cli_startup.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from nettrain.errors import ConfigError, DataError, DivergenceError, NettrainError, TopologyError
from nettrain.version import __version__

if TYPE_CHECKING:
    from rich.console import Console

    from nettrain.config import RunConfig

BASELINES = ("allreduce", "local_sgd", "dpsgd", "gradient_tracking")


def split_items(items: Sequence[str]) -> tuple[str | None, list[str]]:
    """The config file among ``items`` (the one item without ``=``, wherever it stands)
    and the ``key=value`` overrides, in order."""
    files = [item for item in items if "=" not in item]
    for item in files:
        if not Path(item).suffix and not Path(item).exists():
            raise ConfigError(
                f"expected key=value or a config file (.toml or .json), got {item!r}; a key "
                f"takes its value after '=', e.g. {item if item.isidentifier() else 'rounds'}=50"
            )
    if len(files) > 1:
        raise ConfigError(
            f"one config file at most, got {', '.join(files)}; give the other settings as key=value"
        )
    return (files[0] if files else None), [item for item in items if "=" in item]


def _config(items: Sequence[str]) -> RunConfig:
    """A config file anywhere among ``items``; the ``key=value`` items override its keys."""
    from nettrain.config import load_config, parse_overrides

    source, overrides = split_items(items)
    return load_config(source, parse_overrides(overrides))


def _default_out(kind: str) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{kind}"


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    from nettrain.config import parse_overrides
    from nettrain.experiment import run
    from nettrain.report.tables import summary_table

    if args.resume:
        from nettrain.experiment import resume, resumed_config

        if any("=" not in item for item in args.items):
            raise ConfigError("--resume DIR takes key=value overrides, not a config file")
        cfg = resumed_config(Path(args.resume), parse_overrides(args.items))
        if cfg.engine == "distributed" and os.environ.get("RANK") is None:
            extra = ["--resume", args.resume, *args.items]
            return launch_processes(cfg.nproc or cfg.world_size, cfg, extra)
        result = resume(args.resume, parse_overrides(args.items))
        if not result.is_main:
            return 0  # the rank that writes the run folder reports for everyone
        console.print(summary_table([result.summary], title=result.summary["label"]))
        console.print(f"run folder: {args.resume}")
        return 0
    cfg = _config(args.items)
    out = Path(args.out) if args.out else _default_out(cfg.algorithm)
    advice = f", continue it with `nettrain run --resume {out} rounds=N` (checkpoint_every>0)"
    from nettrain.recording import refuse_finished

    refuse_finished([out], args.force, advice=advice)
    rank = os.environ.get("RANK")
    if cfg.engine == "distributed" and rank is None:
        force = ["--force"] if args.force else []
        return launch_processes(
            cfg.nproc or cfg.world_size, cfg, [*args.items, "--out", str(out), *force]
        )
    result = run(cfg, out)
    if not result.is_main:
        return 0  # the rank that writes the run folder reports for everyone
    console.print(summary_table([result.summary], title=result.summary["label"]))
    console.print(f"run folder: {out}")
    return 0


def launch_processes(nproc: int, cfg: RunConfig, arguments: Sequence[str]) -> int:
    """Run ``nettrain run ARGUMENTS`` as ``nproc`` processes on this machine, meeting at
    ``master_addr:master_port`` (:mod:`nettrain.engines.distributed.launch`); the first
    non-zero exit status of a rank, else 0."""
    from nettrain.engines.distributed.launch import launch_local

    return launch_local(
        nproc, ["run", *arguments], cfg.master_addr, cfg.master_port, cfg.timeout_s, cfg.restarts
    )


def cmd_compare(args: argparse.Namespace, console: Console) -> int:
    from nettrain.config import load_config
    from nettrain.description import describe_runs
    from nettrain.report.tables import aggregate_table, summary_table
    from nettrain.sweeps import sweep

    given = [a.strip() for a in args.algorithms.split(",") if a.strip()] if args.algorithms else []
    items = _compare_items(args.items, given)
    if items.source:  # the file's keys, validated, under the command line's
        items.shared.update(load_config(items.source).to_dict() | items.shared)
    engines = items.grid.get("engine") or [items.shared.get("engine", "sim")]
    launch = "distributed" in engines and os.environ.get("RANK") is None
    if launch and args.jobs != 1:
        raise ConfigError(
            f"--jobs {args.jobs}: engine=distributed runs go one at a time, each with its "
            "own processes; drop --jobs"
        )
    out = Path(args.out) if args.out else _default_out("compare")

    def kept(name: str, records: list[dict[str, Any]] | None, note: str) -> None:
        if note == "kept":
            console.print(f"{out / name}: kept (a finished run of the same config)")

    result = sweep(
        items.shared,
        items.grid,
        out,
        algorithms=items.algorithms,
        settings=items.settings,
        jobs=args.jobs,
        force=args.force,
        execute=_processes_execute(args.force) if launch else None,
        done=kept,
    )
    if not result.rows:
        return 0  # another rank of a compare under torchrun: rank 0 reports for everyone
    about = describe_runs({name: cfg.to_dict() for name, cfg in result.configs.items()})
    title = about.title(width=10**4)  # one line: the terminal wraps it
    if result.aggregate:
        console.print(aggregate_table(result.aggregate, result.by, title=f"{title}, mean ± std"))
        console.print(f"runs: {out}/ALGORITHM/KEY=VALUE,...")
        console.print(
            f"tables: {out / 'summary.csv'} (runs), {out / 'aggregate.csv'} (groups)   "
            f"plot: {out / 'compare.png'}"
        )
        return 0
    console.print(summary_table(result.rows, title=title))
    console.print(f"table: {out / 'summary.csv'}   plot: {out / 'compare.png'}")
    timelines = [out / name / "timeline.png" for name in result.configs]
    drawn = [str(path) for path in timelines if path.is_file()]
    if drawn:
        console.print(f"timelines: {', '.join(drawn)}")
    console.print(f"one page of every run: nettrain report {out}")
    return 0


def _processes_execute(force: bool) -> Callable[[RunConfig, Path], list[dict[str, Any]]]:
    """How ``nettrain compare engine=distributed`` runs one run: ``nettrain run`` of its
    config (a JSON file) in processes of its own; a failed launch raises NettrainError.
    A run of another engine runs in this process."""
    import tempfile

    from nettrain.recording import config_json, read_records

    def execute(cfg: RunConfig, folder: Path) -> list[dict[str, Any]]:
        if cfg.engine != "distributed":  # a sweep over engine=sim,distributed
            from nettrain.experiment import run

            return run(cfg, folder).records
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"
            path.write_text(json.dumps(config_json(cfg.to_dict())))
            extra = ["--force"] if force else []
            code = launch_processes(
                cfg.nproc or cfg.world_size, cfg, [str(path), "--out", str(folder), *extra]
            )
        if code != 0:
            raise NettrainError(f"the run in {folder} failed (a process exited with {code})")
        return read_records(folder)

    return execute


class CompareItems(NamedTuple):
    """``nettrain compare``'s items: the config file, the shared single values, the
    swept keys with their values, each algorithm's own keys, and the algorithms."""

    source: str | None
    shared: dict[str, Any]
    grid: dict[str, list[str]]
    settings: dict[str, dict[str, str]]
    algorithms: list[str]


def _compare_items(items: Sequence[str], algorithms: Sequence[str] = ()) -> CompareItems:
    """The config file (anywhere among ``items``), the shared ``key=value`` items, the
    swept ones (``lr=0.05,0.1``: see :func:`nettrain.sweeps.split_values`) and each
    algorithm's own (``swarm.local_steps=2``). The algorithms are ``algorithms``
    (``--algorithms``), or ``algorithm=a,b`` among the items, not both; else the
    baselines."""
    from nettrain.config import parse_overrides
    from nettrain.sweeps import split_values

    source, items = split_items(items)
    values = {name: split_values(name, text) for name, text in parse_overrides(items).items()}
    named = values.pop("algorithm", None)
    if named and algorithms:
        raise ConfigError(
            f"the algorithms are given twice (algorithm={','.join(named)} and --algorithms "
            f"{','.join(algorithms)}); keep one"
        )
    chosen = list(algorithms or named or BASELINES)
    shared: dict[str, Any] = {}
    grid: dict[str, list[str]] = {}
    settings: dict[str, dict[str, str]] = {}
    for name, found in values.items():
        scope, dot, key = name.rpartition(".")
        if dot and scope not in chosen:
            raise ConfigError(
                f"{name}={','.join(found)}: {scope!r} is not one of the compared algorithms "
                f"({', '.join(chosen)}); scope a key to one of them as NAME.KEY=VALUE"
            )
        if dot and len(found) > 1:
            raise ConfigError(
                f"{name}={','.join(found)}: a key scoped to one algorithm takes one value; "
                f"sweep {key}={','.join(found)} for every algorithm, or compare {scope} alone"
            )
        if dot:
            settings.setdefault(scope, {})[key] = found[0]
        elif len(found) > 1:
            grid[name] = found
        else:
            shared[name] = found[0]
    return CompareItems(source, shared, grid, settings, chosen)


def cmd_topology(args: argparse.Namespace, console: Console) -> int:
    from rich.table import Table

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
    from rich.table import Table

    from nettrain.config import SECTIONS, describe_keys

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
    from nettrain.config import coerce, parse_overrides
    from nettrain.reproduce import EXPERIMENTS
    from nettrain.reproduce.claims import all_hold, claims_table, counted, write_claims
    from nettrain.reproduce.runner import Request

    if args.name not in EXPERIMENTS:
        raise ConfigError(
            f"no experiment {args.name!r} to reproduce; choose one of {', '.join(EXPERIMENTS)}"
        )
    overrides = parse_overrides(args.set)
    for name in overrides:
        coerce(name, overrides[name])  # an unknown key or bad value fails before any run
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    out = Path(args.out) if args.out else _default_out(f"reproduce-{args.name}")
    ask = Request(out, args.quick, args.seed, console, overrides, args.jobs, args.force, args.seeds)
    seeds = ask.seed_list()  # --seeds below 1 fails before the folder is made
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    claims = EXPERIMENTS[args.name](ask)
    write_claims(claims, out / "claims.json")
    console.print(claims_table(claims))
    empirical = counted(claims)
    held = sum(c.holds for c in empirical)
    console.print(
        f"{held} of {len(empirical)} empirical claims hold over {len(seeds)} seeds "
        f"({len(claims) - len(empirical)} by construction, not counted; "
        f"{time.perf_counter() - start:.0f} s); claims: {out / 'claims.json'}"
    )
    return 0 if all_hold(claims) else 1


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    """One self-contained HTML page of the runs in ``args.dirs``; the page's path."""
    from nettrain.reporting import write_report

    out = write_report(args.dirs, args.out, args.title)
    console.print(f"report: {out}")
    return 0


def cmd_calibrate(args: argparse.Namespace, console: Console) -> int:
    """Measure this machine for the config's model and batch; write the profile, print
    the link's fit per message size and a summary (rank 0 only under torchrun)."""
    from rich.table import Table

    from nettrain.calibration import calibrate

    calibration = calibrate(
        _config(args.items),
        args.out,
        processes=args.processes,
        min_bytes=args.min_bytes,
        max_bytes=args.max_bytes,
        repeats=args.repeats,
    )
    if calibration is None:
        return 0  # another rank under torchrun: rank 0 reports
    table = Table(title="one-way time = latency + bytes / bandwidth, fitted")
    for column in ("bytes", "measured us", "fitted us", "relative residual"):
        table.add_column(column, justify="right")
    for size, measured, fitted, residual in calibration.residuals():
        table.add_row(
            f"{size:,d}", f"{measured * 1e6:.1f}", f"{fitted * 1e6:.1f}", f"{residual:+.1%}"
        )
    console.print(table)
    for line in calibration.summary():
        console.print(line, highlight=False, soft_wrap=True)
    return 0


def byte_count(text: str) -> int:
    """``--max-bytes``'s value: a number of bytes, or with a suffix k, M or G (powers of
    1024: ``64M`` is 67,108,864)."""
    scale = {"k": 2**10, "m": 2**20, "g": 2**30}.get(text[-1:].lower(), 1)
    try:
        value = int(text[:-1] if scale > 1 else text) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of bytes (e.g. 4096, 64k, 16M)"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give at least 1 byte")
    return value


class Parser(argparse.ArgumentParser):
    """An argument parser whose epilog may be computed when help is shown
    (``epilog_from``), so that building the parser imports nothing heavy."""

    def __init__(self, *args: Any, epilog_from: Callable[[], str] | None = None, **kw: Any):
        super().__init__(*args, **kw)
        self.epilog_from = epilog_from

    def format_help(self) -> str:
        if self.epilog_from is not None and self.epilog is None:
            self.epilog = self.epilog_from()
        return super().format_help()


class VersionAction(argparse.Action):
    """``--version``: nettrain's and torch's versions (torch imported only here)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the versions and exit", **kw)

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kw: Any) -> None:
        import torch

        print(f"nettrain {__version__} (torch {torch.__version__})")
        parser.exit()


def topology_choices() -> str:
    """``nettrain topology --help``'s list of graph kinds, weights and schedules."""
    from nettrain.topology import GRAPHS, SCHEDULES, WEIGHTS

    return (
        f"kinds: {', '.join(GRAPHS)}; weights: {', '.join(WEIGHTS)}; "
        f"schedules: {', '.join(SCHEDULES)}"
    )


def experiment_names() -> str:
    """``nettrain reproduce --help``'s list of experiments."""
    from nettrain.reproduce import EXPERIMENTS

    return f"experiments: {', '.join(EXPERIMENTS)}"


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; it imports nothing heavy (help is instant)."""
    parser = Parser(
        prog="nettrain", description="Train neural networks across a network of agents."
    )
    parser.add_argument("--version", action=VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    items_help = (
        "a config file (TOML or JSON) anywhere among key=value overrides (`nettrain keys` "
        "lists keys)"
    )
    force_help = "overwrite the finished run(s) in --out"

    p = sub.add_parser("run", help="run one configuration and write a run folder")
    p.add_argument("items", nargs="*", help=items_help)
    p.add_argument("--out", help="run folder (default runs/<time>-<algorithm>)")
    p.add_argument("--force", action="store_true", help=force_help)
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint.pt")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "compare",
        help="run several algorithms, or every combination of some keys' values "
        "(lr=0.05,0.1 seed=0,1,2), on one problem",
    )
    p.add_argument(
        "items",
        nargs="*",
        help=f"{items_help}; KEY=A,B,... sweeps a key (a list-valued key in brackets: "
        "'hidden=[64],[64,32]'); NAME.KEY=VALUE gives a key to one algorithm",
    )
    p.add_argument(
        "--algorithms",
        help=f"comma-separated names, like algorithm=a,b (default {','.join(BASELINES)})",
    )
    p.add_argument(
        "--out", help="folder for the runs, summary.csv, aggregate.csv (a sweep) and compare.png"
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="run again into --out where it holds finished runs of other configs (without "
        "it, finished runs of the same config are kept and others refused)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="runs at a time, each in its own process with the cores shared out (default 1)",
    )
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser(
        "topology",
        help="describe a topology: degrees, spectral gap, checks",
        epilog_from=topology_choices,
    )
    p.add_argument("kind", help="graph kind (listed below)")
    p.add_argument("--agents", type=int, required=True)
    p.add_argument("--weights", default="metropolis", help="mixing weights (listed below)")
    p.add_argument("--schedule", default="static", help="time-varying schedule (listed below)")
    p.add_argument("--drop-prob", type=float, default=0.0)
    p.add_argument("--degree", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_topology)

    p = sub.add_parser("keys", help="list every config key with its default and meaning")
    p.add_argument("--markdown", action="store_true")
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser(
        "reproduce",
        help="check a paper's claims at small scale (claims.json)",
        epilog_from=experiment_names,
    )
    p.add_argument("name", help="the experiment (listed below)")
    p.add_argument("--quick", action="store_true", help="the short version (minutes)")
    p.add_argument("--seed", type=int, default=0, help="the first seed (default 0)")
    p.add_argument(
        "--seeds",
        type=int,
        help="run every configuration for this many seeds, --seed, --seed + 1, ... "
        "(default 3 with --quick, 5 without); tables show the mean ± std over them",
    )
    p.add_argument("--out", help="folder for runs, plots, summary.csv and claims.json")
    p.add_argument(
        "--force",
        action="store_true",
        help="run again into --out even where it holds finished runs of other configs "
        "(without it, finished runs of the same config are kept and others refused)",
    )
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

    p = sub.add_parser(
        "report",
        help="one HTML page of run folders: config differences, summaries, claims, metrics",
    )
    p.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="a run folder, or a folder of runs (nettrain compare, reproduce); a single run "
        "folder is also plotted again (plot.png)",
    )
    p.add_argument("--out", help="the HTML file (default DIR/report.html for one DIR)")
    p.add_argument("--title", default="", help="the page's heading")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "calibrate",
        help="measure this machine's compute per sample, link latency and bandwidth, and "
        "all-reduce time for a config's model and batch; write a profile for cost_model=",
    )
    p.add_argument("items", nargs="*", help=f"{items_help}: the model, data and batch_size")
    p.add_argument("--out", default="profile.toml", help="the profile (default profile.toml)")
    p.add_argument(
        "--processes",
        type=int,
        default=2,
        help="processes the run will have, spawned on this machine and measured busy at once "
        "(default 2; under torchrun: the launched ranks)",
    )
    p.add_argument(
        "--min-bytes", type=byte_count, default="1k", help="smallest message (default 1k)"
    )
    p.add_argument(
        "--max-bytes",
        type=byte_count,
        default="64M",
        help="largest message; the sizes double from --min-bytes (default 64M)",
    )
    p.add_argument(
        "--repeats", type=int, default=10, help="timings per figure, median kept (default 10)"
    )
    p.set_defaults(func=cmd_calibrate)
    return parser


def option_as_key(argv: Sequence[str], unknown: Sequence[str], command: str | None) -> str:
    """The message for options the parser does not know: a config key given as an
    option (``--rounds 50``) is told its ``key=value`` form."""
    from nettrain.config import FIELDS

    for token in unknown:
        if not token.startswith("--"):
            continue
        name, eq, value = token[2:].partition("=")
        key = name.replace("-", "_")
        if key not in FIELDS:
            continue
        if not eq:
            at = list(argv).index(token)
            following = argv[at + 1] if at + 1 < len(argv) else ""
            value = following if following and not following.startswith("-") else "VALUE"
        form = f"{key}={value}"
        if command == "reproduce":
            form = f"--set {form}"
        return f"{token} is not an option: config keys are given as key=value; use {form}"
    where = f"nettrain {command} --help" if command else "nettrain --help"
    return f"unrecognized arguments: {' '.join(unknown)} (`{where}` lists the options)"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: the process's arguments); the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if hasattr(args, "items"):  # items after an option (`--out DIR lr=0.1`) are items too
        args.items += [token for token in unknown if not token.startswith("-")]
        unknown = [token for token in unknown if token.startswith("-")]
    try:
        if unknown:
            raise ConfigError(option_as_key(argv, unknown, args.command))
        from rich.console import Console

        # Piped output (logs, CI) gets 120 columns instead of rich's default 80.
        console = Console(width=None if sys.stdout.isatty() else 120)
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
