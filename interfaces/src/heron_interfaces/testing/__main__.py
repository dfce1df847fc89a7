"""``python -m heron_interfaces.testing NAME [pytest args...]``: run the conformance suite on NAME.

A shorthand for ``pytest --pyargs heron_interfaces.testing.conformance --heron-backend NAME``,
so a vendor does not need to remember how pytest addresses a test module inside a package.
"""

from __future__ import annotations

import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        print(
            "usage: python -m heron_interfaces.testing BACKEND_NAME [pytest arguments]\n"
            "       (BACKEND_NAME as registered in the 'heron.backends' entry-point group)",
            file=sys.stderr,
        )
        return 2
    name, rest = args[0], args[1:]
    # A fresh interpreter: this one already imported heron_interfaces, which would keep pytest
    # from rewriting the suite's asserts into informative failure messages.
    command = [sys.executable, "-m", "pytest", "--pyargs", "heron_interfaces.testing.conformance"]
    return subprocess.call([*command, "--heron-backend", name, *rest])


if __name__ == "__main__":
    sys.exit(main())
