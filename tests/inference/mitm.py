"""A man in the middle for tests: a TCP relay on loopback that can flip, record and inject client bytes."""

from __future__ import annotations

import socket
import threading


class Mitm:
    """Relays every connection to ``target``; connection ``i``'s client-to-server bytes can be tampered with.

    Arm one action for the next client-to-server chunk (one request, in practice): ``flip`` inverts its
    last byte, ``record`` keeps a copy in ``recorded`` (and forwards it), ``inject`` sends the given bytes
    instead of it.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.lsock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.lsock.getsockname()[1]}"
        self.action: tuple[str, bytes] | None = None
        self.recorded = b""
        self.done = threading.Event()
        self._stop = threading.Event()
        self._socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, action: str, data: bytes = b"") -> None:
        self.done.clear()
        self.action = (action, data)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                a, _ = self.lsock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            b = socket.create_connection(self.target)
            self._socks += [a, b]
            threading.Thread(target=self._pump, args=(a, b, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(b, a, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                if upstream and self.action is not None:
                    what, payload = self.action
                    self.action = None
                    if what == "flip":
                        data = data[:-1] + bytes([data[-1] ^ 0xFF])
                    elif what == "record":
                        self.recorded = data
                    elif what == "inject":
                        data = payload
                    self.done.set()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self.lsock.close()
        for s in self._socks:
            s.close()
