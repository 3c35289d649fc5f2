"""``nettrain report``: the HTML page (rendered in headless Chromium), its tables, and
the plots' choice of panels, scales and titles."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from nettrain.cli import main
from nettrain.description import describe_runs
from nettrain.report.html import FIGURE_MAKERS, config_differences
from nettrain.report.plots import _band_at, choose_panels, plot_run, plot_runs, plot_seeds, x_axes
from nettrain.reproduce.claims import BY_CONSTRUCTION, EMPIRICAL, Claim, Measured, write_claims

TINY = [
    *("dataset=digits", "agents=4", "rounds=6", "eval_every=2", "progress=false"),
    "tensorboard=false",
]
BROWSERS = ("chromium-headless-shell", "chromium", "chromium-browser")


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny comparison of two methods, and its report (``report.html``)."""
    out = tmp_path_factory.mktemp("report") / "cmp"
    assert main(["compare", *TINY, "--algorithms", "dpsgd,allreduce", "--out", str(out)]) == 0
    assert main(["report", str(out)]) == 0
    return out


def browser() -> str:
    """A headless Chromium; skips the test where there is none, but fails where
    ``NETTRAIN_REQUIRE_CHROMIUM`` is set (CI installs it)."""
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found:
        return found
    if os.environ.get("NETTRAIN_REQUIRE_CHROMIUM"):
        pytest.fail("NETTRAIN_REQUIRE_CHROMIUM is set but no Chromium is installed")
    pytest.skip("no headless Chromium (apt-get install chromium-headless-shell)")


def table_html(page: str, css: str) -> str:
    match = re.search(rf'<table class="{css}">.*?</table>', page, re.S)
    assert match, f"no table of class {css}"
    return match.group(0)


def test_report_renders_in_chromium_with_every_image_loaded(compared: Path) -> None:
    page = compared / "report.html"
    command = [
        browser(),
        *("--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"),
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    loaded = re.search(r'data-images-loaded="(\d+)"', body.group(0))
    assert total and loaded, body.group(0)
    assert int(loaded.group(1)) == int(total.group(1)) > 0


def test_report_is_self_contained(compared: Path) -> None:
    page = (compared / "report.html").read_text()
    assert not re.search(r'(src|href)="(?!data:)', page)  # images inline, no links out
    assert page.count('<img src="data:image/png;base64,') >= 3  # round, samples, bytes, time
    assert "Summary" in page and "Configuration" in page and "Metrics" in page


def test_config_table_lists_only_the_keys_that_differ(compared: Path) -> None:
    differ, common = config_differences(
        {"a": {"lr": 0.1, "rounds": 6, "tau": 4}, "b": {"lr": 0.2, "rounds": 6}}
    )
    assert differ == ["lr", "tau"] and common == {"rounds": 6}
    page = (compared / "report.html").read_text()
    diff = table_html(page, "diff")
    assert "<th>algorithm</th>" in diff and "<td>allreduce</td>" in diff
    assert "<th>rounds</th>" not in diff and "<th>dataset</th>" not in diff
    common_table = table_html(page, "common")
    assert "<td>rounds</td>" in common_table and "<td>algorithm</td>" not in common_table
    assert "<details>" in page


def test_reproduction_report_has_the_claims_table(compared: Path, tmp_path: Path) -> None:
    repro = tmp_path / "repro"
    for name in ("dpsgd", "allreduce"):
        shutil.copytree(compared / name, repro / "setting" / name)
    claims = [
        Claim(
            "gossip <b>keeps</b> up",
            EMPIRICAL,
            "accuracy gap <= 5 points",
            Measured.of([1.0, 1.2], "gap 1 point"),
            True,
        ),
        Claim("all-reduce is cheaper", EMPIRICAL, "ratio < 1", Measured.of([1.2], "1.2"), False),
        Claim("8 bits are 4x fewer", BY_CONSTRUCTION, "ratio 4", Measured.of([3.9], "3.9"), False),
    ]
    write_claims(claims, repro / "claims.json")
    out = tmp_path / "page.html"
    assert main(["report", str(repro), "--out", str(out)]) == 0
    page = out.read_text()
    table = table_html(page, "claims")
    assert "gossip &lt;b&gt;keeps&lt;/b&gt; up" in table  # user text escaped
    assert "<td>yes</td>" in table and "<td>NO</td>" in table
    assert "<td>gap 1 point</td>" in table and "<td>by construction</td>" in table
    assert "1 of 2 empirical claims hold" in page  # the by-construction one not counted
    assert "setting/dpsgd" in table_html(page, "summary")


def test_report_of_one_run_plots_it_again(compared: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(compared / "dpsgd", run)
    (run / "plot.png").unlink()
    (run / "report.html").unlink(missing_ok=True)
    assert main(["report", str(run)]) == 0
    assert (run / "plot.png").stat().st_size > 0
    assert (run / "report.html").is_file()
    assert str(run / "report.html") in capsys.readouterr().out.replace("\n", "")


def test_report_of_a_folder_without_runs_is_bad_input(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "holds no run" in err and "config.json and metrics.jsonl" in err
    assert main(["report", str(tmp_path / "missing")]) == 2


def test_figure_makers_add_a_figure_per_run(compared: Path, tmp_path: Path) -> None:
    def marker(run, out: Path) -> Path | None:
        if run.name != "dpsgd":
            return None
        return plot_run(run.records[:1], out / "extra.png")

    FIGURE_MAKERS.append(("marker figure", marker))
    try:
        assert main(["report", str(compared), "--out", str(tmp_path / "r.html")]) == 0
    finally:
        FIGURE_MAKERS.pop()
    page = (tmp_path / "r.html").read_text()
    assert "dpsgd: marker figure" in page and "allreduce: marker figure" not in page


def records(consensus: float, rounds: int = 5, zero: bool = True) -> list[dict]:
    """Records of a run whose consensus distance stays near ``consensus`` (with a
    round-0 record of zeros where ``zero``), losses falling over decades."""
    out = [
        {
            "round": t,
            "samples": 64 * t,
            "bytes_total": 1000 * 30**t if t else 0,
            "virtual_time_s": None,
            "test_accuracy": 0.1 + 0.15 * t,
            "train_loss": 2.0 / 10**t,
            "consensus_distance": consensus * (1 + 0.1 * t) if t else 0.0,
            "agent_test_accuracy": [0.1, 0.2],
            "label": "text",
        }
        for t in range(0 if zero else 1, rounds + 1)
    ]
    return out


def test_panels_split_scales_and_choose_log_axes() -> None:
    runs = {"allreduce": records(1e-12), "dpsgd": records(1e-1)}
    panels = choose_panels(runs)
    assert {p.key for p in panels} == {"test_accuracy", "train_loss", "consensus_distance"}
    consensus = [p for p in panels if p.key == "consensus_distance"]
    assert [p.runs for p in consensus] == [("allreduce",), ("dpsgd",)]  # never one axis
    by_key = {p.key: p for p in panels}
    assert by_key["train_loss"].log and not by_key["test_accuracy"].log
    assert [k for k, _ in x_axes(runs)] == ["round", "samples", "bytes_total"]  # no clock
    together = choose_panels({"a": records(1e-2), "b": records(3e-2)}, ["consensus_distance"])
    assert [p.runs for p in together] == [("a", "b")]


@pytest.mark.parametrize("zero", [True, False])
def test_plots_draw_with_or_without_round_zero_and_one_record(tmp_path: Path, zero) -> None:
    runs = {"allreduce": records(1e-12, zero=zero), "dpsgd": records(1e-1, zero=zero)}
    assert plot_runs(runs, tmp_path / "all.png", "title").stat().st_size > 0
    assert plot_run(records(1e-1, rounds=0 if zero else 1, zero=zero), tmp_path / "one.png")
    assert plot_run([], tmp_path / "none.png").is_file()


def test_a_band_over_seeds_stands_at_the_runs_x_values(tmp_path: Path) -> None:
    mean = [{"round": t, "epoch": t / 4} for t in (0, 4, 8)]
    band = [(0, 0.1, 0.2), (4, 0.3, 0.5), (8, 0.6, 0.9), (12, 0.7, 0.8)]
    assert _band_at(mean, band, "epoch") == [(0.0, 0.1, 0.2), (1.0, 0.3, 0.5), (2.0, 0.6, 0.9)]
    assert _band_at(mean, band, "round")[1] == (4.0, 0.3, 0.5)
    seeds = {"dpsgd": [records(1e-1), records(2e-1)], "diverged": []}
    panels = [("consensus_distance", "consensus", True), ("test_accuracy", "accuracy", False)]
    path = plot_seeds(seeds, panels, tmp_path / "seeds.png", x=("samples", "samples"))
    assert path.stat().st_size > 10_000


def test_titles_leave_out_what_a_method_does_not_use() -> None:
    base = {"dataset": "digits", "model": "linear", "partition": "iid", "agents": 8}
    base |= {"rounds": 10, "lr": 0.1, "topology": "ring", "tau": 4, "local_steps": 1}
    base |= {"quantizer": "none", "bits": 8, "stragglers": 0.0, "straggler_slowdown": 4.0}
    configs = {
        "allreduce": base | {"algorithm": "allreduce"},
        "easgd": base | {"algorithm": "easgd"},
        "dpsgd": base | {"algorithm": "dpsgd", "quantizer": "lattice", "stragglers": 0.25},
        "swarm": base | {"algorithm": "swarm", "local_steps": 2},
    }
    about = describe_runs(configs)
    assert "topology" not in about.title() and "agents=8" in about.title()
    assert "topology" not in about.label("allreduce") and "topology" not in about.label("easgd")
    assert "tau=4" in about.label("easgd") and "tau" not in about.label("dpsgd")
    dpsgd = about.label("dpsgd")
    assert "topology=ring" in dpsgd and "quantizer=lattice" in dpsgd and "bits=8" in dpsgd
    assert "stragglers=0.25" in dpsgd and "straggler_slowdown=4" in dpsgd
    assert "local_steps=2" in about.label("swarm") and "quantizer" not in about.label("swarm")
