"""Per-agent timelines: what each agent did when, in ``timeline.jsonl``, and their plot.

A run with ``timeline=true`` writes ``timeline.jsonl`` in its run folder: one JSON
object per interval of the first ``timeline_rounds`` rounds, sorted by agent, then
start::

    {"agent": 3, "kind": "compute", "start": 0.0125, "end": 0.0131, "round": 2}

``agent`` is the agent's id (``n + s`` for parameter server ``s`` of a run with ``n``
agents, as the distributed engine numbers its server ranks); ``start`` and ``end`` are
seconds (``start < end``); ``round`` is the round the interval belongs to, counted from
1 as records count them (round 0: the work of a method's initialisation in the
simulator, e.g. gradient tracking's first gradients). ``kind`` is one of :data:`KINDS`:

* ``compute``: local work. In the simulator's synchronous rounds ``s_i * c *
  samples_i`` (slow-down, seconds per sample, samples read: :class:`~nettrain.engines.
  sim.clock.CostModel`); in its events, an agent's local phase.
* ``send``: messages on the wire, ``latency * messages_i + bytes_i / bandwidth`` in the
  simulator (resends of dropped messages included); in real processes, the time spent
  handing messages to ``torch.distributed`` (posting sends, starting all-reduces).
* ``wait``: waiting for others. A synchronous round ends when the slowest agent is done,
  ``T = max_i busy_i``, so agent ``i`` waits ``T - busy_i``; an event waits for a blocking
  partner or in a parameter server's queue; in real processes, the time blocked in a
  communication's ``wait`` (the transfer and the slower peers, which cannot be told apart).
* ``serve``: a parameter server's link busy with a worker's message (the simulator's
  server queues).

Times are the virtual clock's in the simulator and, under ``engine=distributed``,
``time.perf_counter()`` seconds since the rounds started on each process (the
processes' clocks are lined up by a collective just before); the agents a process
holds share its intervals.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

FILE = "timeline.jsonl"
PLOT = "timeline.png"  # what a run folder draws of it
KINDS = ("compute", "send", "wait", "serve")
COLOURS = {"compute": "tab:blue", "send": "tab:orange", "wait": "tab:gray", "serve": "tab:green"}
MAX_ROWS = 64  # agents drawn; a larger run draws the first ones and says so


def write_timeline(folder: str | Path, events: Iterable[dict[str, Any]], since: int = 0) -> Path:
    """Write ``folder/timeline.jsonl``: ``events`` sorted by agent and start, after the
    intervals of rounds before ``since`` that the file already holds (a resumed run)."""
    path = Path(folder) / FILE
    kept = [e for e in read_timeline(folder) if e["round"] < since] if path.is_file() else []
    ordered = sorted([*kept, *events], key=lambda e: (e["agent"], e["start"], e["end"]))
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(e) + "\n" for e in ordered))
    tmp.replace(path)
    return path


def read_timeline(folder: str | Path) -> list[dict[str, Any]]:
    """The intervals of a run folder's ``timeline.jsonl``."""
    lines = (Path(folder) / FILE).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def plot_timeline(events: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Draw ``events`` as one row of bars per agent (time on the x axis, one colour per
    kind) and write the figure to ``path``; at most :data:`MAX_ROWS` agents, the first."""
    # here, not at the top: every process of a run imports this module to write the
    # intervals, and matplotlib would add 0.3 s to each one's start
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    agents = sorted({e["agent"] for e in events})
    shown = agents[:MAX_ROWS]
    if len(agents) > MAX_ROWS:
        title = f"{title} (the first {MAX_ROWS} of {len(agents)} agents)".strip()
    row = {a: k for k, a in enumerate(shown)}
    bars: dict[tuple[int, str], list[tuple[float, float]]] = {}
    for e in events:
        if e["agent"] in row:
            bars.setdefault((e["agent"], e["kind"]), []).append((e["start"], e["end"] - e["start"]))
    fig = Figure(figsize=(12, 1.5 + 0.22 * max(len(shown), 4)), constrained_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for (agent, kind), spans in bars.items():
        ax.broken_barh(spans, (row[agent] - 0.4, 0.8), facecolors=COLOURS.get(kind, "tab:red"))
    kinds = [k for k in KINDS if any(kind == k for _, kind in bars)]
    kinds += sorted({kind for _, kind in bars} - set(KINDS))
    handles = [Patch(color=COLOURS.get(k, "tab:red"), label=k) for k in kinds]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(kinds))
    step = max(1, len(shown) // 32)  # a readable number of labels
    ax.set_yticks(range(0, len(shown), step), [str(a) for a in shown[::step]])
    ax.set_ylim(max(len(shown), 1) - 0.5, -0.5)  # agent 0 at the top
    ax.set_ylabel("agent")
    ax.set_xlabel("time (s)")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=100)
    return Path(path)
