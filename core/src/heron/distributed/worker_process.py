"""``python -m heron.distributed.worker_process RANK``: a worker rank, started by the driver."""

from __future__ import annotations

import sys

from heron.distributed.processes import connect_to_driver
from heron.distributed.worker import worker_main


def main() -> None:
    conn = connect_to_driver(int(sys.argv[1]))
    worker_main(conn.recv(), conn)


if __name__ == "__main__":
    main()
