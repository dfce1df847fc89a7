"""The waiting queue: FIFO with O(1) push to either end and O(1) removal by request id.

A ``deque`` would do for FIFO order, but aborts (client disconnects, stop strings) remove requests
from the middle, and ``deque.remove`` is O(n): a burst of aborts would cost O(n^2). An
``OrderedDict`` keyed by request id gives every operation the scheduler needs in O(1).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

from heron.request import Request


class RequestQueue:
    """Requests in scheduling order; preempted ones are pushed back to the front."""

    def __init__(self) -> None:
        self._requests: OrderedDict[str, Request] = OrderedDict()

    def __len__(self) -> int:
        return len(self._requests)

    def __bool__(self) -> bool:
        return bool(self._requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._requests.values())

    def __contains__(self, request_id: object) -> bool:
        return request_id in self._requests

    def append(self, request: Request) -> None:
        self._requests[request.request_id] = request

    def appendleft(self, request: Request) -> None:
        self._requests[request.request_id] = request
        self._requests.move_to_end(request.request_id, last=False)

    def peek(self) -> Request:
        """The next request to schedule; IndexError when empty."""
        try:
            return next(iter(self._requests.values()))
        except StopIteration:
            raise IndexError("peek from an empty RequestQueue") from None

    def popleft(self) -> Request:
        if not self._requests:
            raise IndexError("pop from an empty RequestQueue")
        return self._requests.popitem(last=False)[1]

    def remove(self, request_id: str) -> Request | None:
        """Take a request out wherever it is; None when it is not queued."""
        return self._requests.pop(request_id, None)
