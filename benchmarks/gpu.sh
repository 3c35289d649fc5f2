#!/usr/bin/env bash
# The simulator's throughput benchmark on the GPU: benchmarks/sim_throughput.py with
# --device cuda (data, models, the simulator's state and the matmul yardstick on the
# GPU, every timed block synchronised). Prints the same JSON lines as the CPU run, the
# summary line with "device": "cuda". Extra arguments go to sim_throughput.py:
#
#     benchmarks/gpu.sh [--quick] [--breakdown] [--allocator default|retain|both]
#
# Runs this checkout's code (src/ first on PYTHONPATH) with the repository's
# .venv/bin/python, which needs a CUDA build of torch and a visible GPU.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=.venv/bin/python
if [[ ! -x $python ]]; then
    echo "gpu.sh: no $python in $(pwd); create the virtual environment first" >&2
    exit 1
fi
if ! "$python" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
    version=$("$python" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo "?")
    echo "gpu.sh: no CUDA device: torch $version sees no GPU (torch.cuda.is_available() is" \
        "False). This benchmark needs a GPU and a CUDA build of torch; on the CPU run" \
        "$python benchmarks/sim_throughput.py" >&2
    exit 1
fi
export PYTHONPATH="$(pwd)/src${PYTHONPATH:+:$PYTHONPATH}"
exec "$python" benchmarks/sim_throughput.py --device cuda "$@"
