"""One torchrun process of the equivalence tests: runs several configs in a row.

``python -m torch.distributed.run --nproc-per-node N worker.py OUT CONFIG_JSON...``:
each rank joins one gloo group, runs every config with ``engine=distributed`` through
:func:`nettrain.experiment.run` (the engine uses the group it finds; a config's
``_out`` is the run folder), then leaves it;
rank 0 saves ``{label: {"x": (n, d), "summary": ..., "records": ...}}`` to ``OUT``.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist

from nettrain.config import load_config
from nettrain.experiment import run


def main(out: str, configs: list[str]) -> None:
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    results = {}
    for text in configs:
        overrides = json.loads(text)
        folder = overrides.pop("_out", None)  # a run folder, for the checkpoint's per-agent totals
        result = run(load_config(overrides | {"engine": "distributed"}), folder)
        results[text] = {"x": result.x, "summary": result.summary, "records": result.records}
    if os.environ["RANK"] == "0":
        torch.save(results, out)
    dist.barrier()
    # Leave without destroy_process_group or interpreter teardown: about one launch in
    # five, a rank aborted there ("terminate called without an active exception")
    # after every result was saved (the engine itself still does barrier + destroy).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
