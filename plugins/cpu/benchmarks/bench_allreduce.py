"""All-reduce latency between two CPU ranks: gloo (TCP on loopback) against the CPU
communicator's shared memory (its Python path and its compiled call), at the sizes a tensor-parallel step of a SmolLM2-sized model
all-reduces (hidden 512: 64 decode rows, 2,048 prefill rows).

    python plugins/cpu/benchmarks/bench_allreduce.py [--rows 1 64 2048] [--hidden 512]

Each rank runs on its own core (one thread), as engine ranks do; prints the mean of 100 calls.
"""

from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank(rank: int, port: int, rows: list[int], hidden: int) -> None:
    os.sched_setaffinity(0, [rank % os.cpu_count()])
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    from heron_cpu.communicator import CpuCommunicator
    from heron_interfaces import CommContext

    comm = CpuCommunicator(CommContext(world_size=2, rank=rank))
    calls = 100
    for n in rows:
        for dtype in (torch.bfloat16, torch.float32):
            x = torch.randn(n, hidden).to(dtype)
            timings = {}
            arms = (
                ("gloo", dist.all_reduce),
                ("shared memory, Python", comm._shm.all_reduce_python),
                ("shared memory, compiled", comm.all_reduce),
            )
            for name, fn in arms:
                for _ in range(10):
                    fn(x)
                start = time.perf_counter()
                for _ in range(calls):
                    fn(x)
                timings[name] = (time.perf_counter() - start) / calls * 1e6
            if rank == 0:
                cells = "   ".join(f"{name} {us:7.1f} us" for name, us in timings.items())
                print(f"{n:>5} x {hidden} {dtype!s:<15} {cells}")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 64, 2048])
    parser.add_argument("--hidden", type=int, default=512)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_rank, args=(port, args.rows, args.hidden), nprocs=2)


if __name__ == "__main__":
    main()
