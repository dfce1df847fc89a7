"""The Ray executor: ranks 1..N-1 as Ray actors in a placement group, possibly on other machines.

Ray is the multi-machine engine (as in vLLM), imported only when ``--distributed-executor-backend
ray`` is chosen (``pip install 'heron-core[ray]'``). The engine process joins the cluster that
``RAY_ADDRESS`` names, or starts a local one. The placement group holds one bundle per rank
(``HERON_RAY_CPUS_PER_RANK`` CPUs each, default 1; ``HERON_RAY_PLACEMENT_STRATEGY``, default
``PACK``, ``STRICT_SPREAD`` puts every rank on its own node); rank 0 (the driver, this process)
takes the bundle on this node. Ranks then join the platform's ``torch.distributed`` group over TCP
at this node's address, exactly as the multiprocess executor's do, and each step is one actor call
per rank carrying the same :class:`~heron.distributed.step_sync.StepMessage`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from typing import Any

from heron.distributed.executor import MultiprocExecutor, WorkerFailedError
from heron.distributed.worker import Worker, WorkerSpec, dist_timeout

logger = logging.getLogger(__name__)

CPUS_ENV = "HERON_RAY_CPUS_PER_RANK"
STRATEGY_ENV = "HERON_RAY_PLACEMENT_STRATEGY"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            "distributed_executor_backend 'ray' needs Ray: pip install 'heron-core[ray]'"
        ) from None
    return ray


class RankActor:
    """Body of one rank's Ray actor: the same :class:`Worker` a worker process runs.

    An error is returned (not raised) with this rank's traceback, and the actor's process then
    exits, so that its peers' next collective fails instead of waiting for it.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.worker: Worker | None = None

    def ping(self) -> bool:
        return True

    def handle(self, kind: str, payload: Any) -> tuple[str, Any]:
        import traceback

        import torch

        try:
            if kind == "init":
                self.worker = Worker(self.spec)
                return ("ok", None)
            assert self.worker is not None  # "init" comes first
            if kind == "stop":
                self.worker.close()
                return ("ok", None)
            if kind == "step":
                with torch.inference_mode():
                    result = self.worker.execute_message(payload)
                return ("ok", result if self.worker.is_output_rank else None)
            method, args = payload
            return ("ok", getattr(self.worker, method)(*args))
        except BaseException as exc:
            detail = "".join(traceback.format_exception(exc))
            threading.Timer(0.5, os._exit, (1,)).start()
            return ("error", f"{type(exc).__name__}: {exc}\n{detail}")


class RayExecutor(MultiprocExecutor):
    """Ranks 1..N-1 as Ray actors; rank 0 (the driver) in this process."""

    def _launch(self, specs: list[WorkerSpec]) -> list[WorkerSpec]:
        ray = import_ray()
        from ray.util.placement_group import placement_group, placement_group_table
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self._ray = ray
        if not ray.is_initialized():
            address = os.environ.get("RAY_ADDRESS") or None
            ray.init(address=address, logging_level=logging.WARNING)
            logger.info(
                "Ray: %s",
                f"joined the cluster at {address}" if address else "started a local cluster",
            )
        cpus = float(os.environ.get(CPUS_ENV, "1"))
        strategy = os.environ.get(STRATEGY_ENV, "PACK")
        size = len(specs)
        group = placement_group([{"CPU": cpus}] * size, strategy=strategy)
        try:
            ray.get(group.ready(), timeout=dist_timeout().total_seconds())
        except ray.exceptions.GetTimeoutError:
            ray.util.remove_placement_group(group)
            raise RuntimeError(
                f"Ray could not place {size} ranks of {cpus:g} CPU(s) ({strategy}) within "
                f"HERON_DIST_TIMEOUT; the cluster has {ray.cluster_resources().get('CPU', 0):g} CPUs"
            ) from None
        self._group = group
        here = ray.get_runtime_context().get_node_id()
        bundle_nodes = placement_group_table(group)["bundles_to_node_id"]
        mine = [b for b, node in bundle_nodes.items() if node == here]
        if not mine:
            ray.util.remove_placement_group(group)
            raise RuntimeError(
                "the Ray placement group has no bundle on this node, where rank 0 runs; start the "
                "engine on a node of the cluster with a free CPU"
            )
        others = [b for b in sorted(bundle_nodes) if b != mine[0]]
        address = ray.util.get_node_ip_address()
        port = int(specs[0].init_method.rpartition(":")[2]) if specs[0].init_method else 0
        init_method = f"tcp://{address}:{port}"
        specs = [_with(spec, init_method=init_method, cores=None) for spec in specs]
        # Steps run one at a time, in the order sent (several may be in flight with pipeline
        # parallelism); the monitor's pings have a lane of their own, answered mid-step.
        actor_cls = ray.remote(num_cpus=cpus, concurrency_groups={"monitor": 1})(RankActor)
        self._actors = [
            actor_cls.options(
                name=None,
                scheduling_strategy=PlacementGroupSchedulingStrategy(
                    placement_group=group, placement_group_bundle_index=bundle
                ),
                runtime_env={"env_vars": _forwarded_env()},
            ).remote(spec)
            for spec, bundle in zip(specs[1:], others)
        ]
        self._nodes = [bundle_nodes[b][:8] for b in others]
        self._pending: deque[list[Any]] = deque(
            [[actor.handle.remote("init", None) for actor in self._actors]]
        )
        """One list of replies per message sent and not yet collected, oldest first."""
        self._procs, self._conns = [], []
        logger.info(
            "Ray: ranks 1-%d placed on node(s) %s (rank 0 on %s), %g CPU(s) each",
            size - 1,
            ", ".join(self._nodes),
            here[:8],
            cpus,
        )
        return specs

    def _start_monitor(self) -> None:
        self._finalizer = weakref.finalize(self, _kill_actors, self._ray, self._actors, self._group)
        self._monitor = threading.Thread(
            target=_watch_actors, args=(weakref.ref(self),), name="heron-ray-monitor", daemon=True
        )
        self._monitor.start()

    def _send(self, message: tuple[str, Any]) -> None:
        kind, payload = message
        self._pending.append([actor.handle.remote(kind, payload) for actor in self._actors])

    def _collect(self, what: str, timeout: float | None = None) -> list[Any]:
        ray = self._ray
        results: list[Any] = []
        pending = self._pending.popleft() if self._pending else []
        limit = timeout if timeout is not None else dist_timeout().total_seconds()
        for rank, ref in enumerate(pending, start=1):
            try:
                status, value = ray.get(ref, timeout=limit)
            except ray.exceptions.GetTimeoutError:
                self._fail(rank, f"did not answer within the timeout during {what}")
            except ray.exceptions.RayError as exc:  # the actor, its process or its node is gone
                self._fail(
                    rank, f"(Ray actor on node {self._nodes[rank - 1]}) died during {what}: {exc}"
                )
            if status == "error":
                self._fail(rank, f"failed during {what}: {value}")
            results.append(value)
        return results

    def check_health(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _kill_all(self) -> None:
        self._closing = True
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer.detach()  # done here: the exit hook must not reach Ray again
        _kill_actors(self._ray, getattr(self, "_actors", []), getattr(self, "_group", None))


def _with(spec: WorkerSpec, **changes: Any) -> WorkerSpec:
    import dataclasses

    return dataclasses.replace(spec, **changes)


def _forwarded_env() -> dict[str, str]:
    """The variables a rank on another node needs to behave like this process's ranks."""
    names = ("HERON_BACKEND", "HERON_PLUGINS", "HF_HUB_OFFLINE", "HERON_DIST_TIMEOUT")
    env = {n: os.environ[n] for n in names if n in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith(("HERON_CPU_", "HERON_KV"))})
    return env


def _kill_actors(ray: Any, actors: list[Any], group: Any) -> None:
    # ray.kill connects a process that is not (or no longer) connected: at interpreter exit that
    # reconnection crashed the process now and then (SIGSEGV after the server had stopped). A
    # driver that is not connected has nothing to kill: Ray ends an owner's actors with it.
    if not ray.is_initialized():
        return
    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor)
    if group is not None:
        with contextlib.suppress(Exception):
            ray.util.remove_placement_group(group)


def _watch_actors(executor_ref: weakref.ref[RayExecutor]) -> None:
    """Ping every rank once a second; a lost actor or node fails the engine within seconds."""
    while True:
        time.sleep(1.0)
        executor = executor_ref()
        if executor is None or executor._closing or executor._failure is not None:
            return
        ray = executor._ray
        for rank, actor in enumerate(executor._actors, start=1):
            try:
                ray.get(actor.ping.options(concurrency_group="monitor").remote(), timeout=10.0)
            except ray.exceptions.RayError as exc:
                if executor._closing:
                    return
                try:
                    executor._fail(
                        rank, f"(Ray actor on node {executor._nodes[rank - 1]}) died: {exc}"
                    )
                except WorkerFailedError:
                    return
        del executor
