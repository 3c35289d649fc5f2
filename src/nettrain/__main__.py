"""``python -m nettrain`` (what ``torchrun -m nettrain`` starts)."""

import sys

from nettrain.cli import main

sys.exit(main())
