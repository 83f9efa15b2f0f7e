"""Connection hygiene under uvicorn: a deadline for request headers and a cap on open connections.

uvicorn times out idle keep-alive connections only after a response, so a client that opens a
connection and sends its headers a byte at a time (slowloris) would hold it forever. This h11
protocol closes a connection whose next request's headers have not all arrived within
`read_timeout` seconds, and closes new connections at once past `max_connections`.
(Request bodies have their own deadline: api.read_body.)
"""
from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol


def guarded_protocol(read_timeout: float, max_connections: int) -> type:
    class GuardedH11(H11Protocol):
        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.close()  # connection_lost drops it from the set
                return
            self._arm_header_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_header_deadline()  # the next request on this connection gets its own deadline

        def _arm_header_deadline(self) -> None:
            waiting_for = self.cycle  # a new cycle object appears once the next request's headers are in

            def expire() -> None:
                if self.cycle is waiting_for and not self.transport.is_closing():
                    self.transport.close()

            self.loop.call_later(read_timeout, expire)

    return GuardedH11
