"""``python -m heron_server [MODEL] [flags]``: the same as ``heron serve``."""

from __future__ import annotations

import sys

from heron_server.cli import main

if __name__ == "__main__":
    sys.exit(main())
