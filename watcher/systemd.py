"""The sd_notify protocol, spoken directly: one datagram per message to $NOTIFY_SOCKET.

It is a dozen lines, so no library: READY=1 once watching, STATUS=... as things change, WATCHDOG=1 from the
main loop at half of $WATCHDOG_USEC (a hung loop stops pinging and systemd restarts the service), STOPPING=1.
Outside systemd (no NOTIFY_SOCKET) every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Example:
    >>> n = Notifier.from_environment()
    >>> n.ready("watching /srv/covers/inbox")
    >>> n.ping(now)          # from the main loop; sends WATCHDOG=1 when due
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None, watchdog_pid: int | None = None):
        self.address = address
        self.interval = watchdog_usec / 2e6 if watchdog_usec else None
        if watchdog_pid is not None and watchdog_pid != os.getpid():
            self.interval = None  # the watchdog is meant for another process
        self._next_ping = 0.0
        self._sock: socket.socket | None = None

    @classmethod
    def from_environment(cls) -> Notifier:
        env = os.environ
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        return cls(env.get("NOTIFY_SOCKET") or None, int(usec) if usec and usec.isdigit() else None,
                   int(pid) if pid and pid.isdigit() else None)

    def send(self, message: str) -> None:
        if not self.address:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        # A leading "@" names a socket in the abstract namespace.
        addr = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._sock.sendto(message.encode(), addr)
        except OSError as exc:
            log.warning("sd_notify %r failed: %s", message.split("=")[0], exc)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def ping(self, now: float) -> None:
        if self.interval and now >= self._next_ping:
            self.send("WATCHDOG=1")
            self._next_ping = now + self.interval

    def reloading(self) -> None:
        self.send("RELOADING=1")

    def stopping(self) -> None:
        self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
