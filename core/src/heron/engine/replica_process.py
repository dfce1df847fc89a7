"""``python -m heron.engine.replica_process RANK``: one data-parallel engine replica.

Started by :class:`~heron.engine.data_parallel.DataParallelEngine`. The replica loads the model,
reports what the front needs to check requests, then runs the engine loop: take the front's
messages (new requests, aborts), step while there is work, and send each step's outputs with the
stats. Its error is sent to the front before it exits; the front going away ends it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from multiprocessing.connection import Connection, wait

from heron.distributed.cpu_binding import BIND_ENV, bind_to_cores
from heron.distributed.processes import connect_to_driver
from heron.engine.data_parallel import ReplicaFacts, ReplicaSpec
from heron.engine.llm_engine import LLMEngine


def replica_main(spec: ReplicaSpec, conn: Connection) -> None:
    logging.basicConfig(
        level=spec.log_level,
        format=f"%(asctime)s %(levelname)s (dp {spec.rank}) %(name)s: %(message)s",
    )
    try:
        if spec.bind_spec is not None:
            os.environ[BIND_ENV] = spec.bind_spec  # for its own tensor-parallel ranks
        if spec.cores is not None:
            bind_to_cores(spec.cores)
        engine = LLMEngine(spec.engine_args)
        facts = ReplicaFacts(
            model_name=engine.model_name,
            input_processor=engine.input_processor,
            limits=engine.core.scheduler.limits(),
            stats=engine.stats(),
            pooling=engine.pooling,
        )
        conn.send(("ready", facts))
        _serve(engine, conn)
    except (EOFError, BrokenPipeError, ConnectionResetError, KeyboardInterrupt):
        os._exit(0)  # the front is gone: nothing to report to
    except BaseException as exc:
        text = f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_exception(exc))
        try:  # the exception itself, so that the front raises what one engine would have raised
            conn.send(("error", (exc, text)))
        except Exception:  # not picklable (or the front is gone): the text says it all
            with contextlib.suppress(Exception):
                conn.send(("error", (None, text)))
        os._exit(1)


def _serve(engine: LLMEngine, conn: Connection) -> None:
    while True:
        if not engine.has_unfinished_requests():
            wait([conn])  # idle: sleep until the front sends something
        while conn.poll():
            kind, payload = conn.recv()
            if kind == "add":
                prepared, output_kind = payload
                engine.add_prepared(prepared, output_kind)
            elif kind == "add_pooling":  # a batch of embedding requests, as plain values
                if engine.pooling is None:
                    raise RuntimeError("embedding requests reached a replica that does not pool")
                for wire in payload:
                    engine.add_prepared(engine.pooling.from_wire(wire))
            elif kind == "abort":
                engine.abort_request(payload)
            elif kind == "abort_all":
                conn.send(("aborted", (engine.abort_all(), engine.stats())))
            elif kind == "stop":
                engine.shutdown()
                return
        if engine.has_unfinished_requests():
            if engine.pooling is not None:  # embeddings go back packed; the front builds them
                packed = engine.step_packed()
                if packed or not engine.has_unfinished_requests():
                    conn.send(("pooled", (packed, engine.stats())))
                continue
            outputs = engine.step()
            if outputs or not engine.has_unfinished_requests():
                conn.send(("outputs", (outputs, engine.stats())))


def main() -> None:
    conn = connect_to_driver(int(sys.argv[1]))
    replica_main(conn.recv(), conn)


if __name__ == "__main__":
    main()
