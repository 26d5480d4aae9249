"""The serial bridge's Trio shell: one port, its frames published, its downlink written.

Theory of operation. ``run`` owns two tasks. The port task opens the device
with pyserial (non-blocking; the bytes then go through the raw fd, read when
``trio.lowlevel.wait_readable`` says so, no threads), feeds what it reads to
the pure decoder and publishes each frame through the bridge's LocalClient,
calling ``wait_room()`` after each read (back-pressure from the store and the
subscribers falls on the device's tty buffer, never on the server). A device
that sends more frames than ``max_rate``/``burst`` allow has the excess
dropped and counted as ``flood``. When the port goes away (EIO, ENOENT, end of
file) the state becomes ``waiting`` and the open is retried with jittered
exponential backoff; any other open failure is ``error`` and retried the
same way. The downlink task takes messages from the ``downlink`` subject
one at a time, writes them (encoded per framing) with ``wait_writable``, and
when the message has a reply subject, answers with the next frame the device
sends within ``reply_timeout`` (that frame is not published on the port's
subject), or with an empty message carrying ``Serial-Status: 408``.
"""

from __future__ import annotations

import contextlib
import os
import random
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import serial  # type: ignore[import-untyped]
import trio

from bridges.serial.config import SerialPortConfig
from bridges.serial.framing import Decoder, Frame, Rejection, encode_downlink, make_decoder
from bridges.serial.template import RenderError
from edge.local import LocalClient, LocalMsg, LocalSubscription, PublishError
from edge.log import RateLimitedWarning, get_logger

log = get_logger("bridges.serial")

READ_SIZE = 4096
WRITE_TIMEOUT = 5.0  # seconds a downlink write may wait for room in the tty
DOWNLINK_PENDING = 256  # downlink messages queued while one is written; beyond: dropped
WARN_PERIOD = 10.0
RECEIVED = "Serial-Received"
PORT = "Serial-Port"
STATUS = "Serial-Status"
ERROR = "Serial-Error"
_PARITY = {
    "none": serial.PARITY_NONE,
    "even": serial.PARITY_EVEN,
    "odd": serial.PARITY_ODD,
    "mark": serial.PARITY_MARK,
    "space": serial.PARITY_SPACE,
}


def received_stamp() -> str:
    """RFC 3339 UTC with microseconds: ``2026-12-01T22:13:51.123456Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class _PortGone(Exception):
    """The device went away while open (read end of file)."""


class SerialBridge:
    kind = "serial"

    def __init__(self, client: LocalClient, config: SerialPortConfig) -> None:
        self.client = client
        self.config = config
        self.name = config.name
        self.state = "waiting"
        self.last_error = ""
        self.frames_in = self.bytes_in = self.published = self.no_interest = 0
        self.written = self.replies = self.reply_timeouts = 0
        self.opens = 0
        self.rejected: Counter[str] = Counter()
        self._port: serial.Serial | None = None
        self._fd: int | None = None
        self._reply: str = ""  # reply subject waiting for the device's answer
        self._answered: trio.Event | None = None
        self._tokens = float(config.burst)
        self._refilled = 0.0
        self._warn = RateLimitedWarning(WARN_PERIOD)
        self._downlink_sub: LocalSubscription | None = None

    # ---- status -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "state": self.state,
            "path": self.config.path,
            "baud": self.config.baud,
            "framing": self.config.framing,
            "subject": self.config.subject.text,
            "downlink": self.config.downlink,
            "frames_in": self.frames_in,
            "bytes_in": self.bytes_in,
            "published": self.published,
            "no_interest": self.no_interest,
            "written": self.written,
            "replies": self.replies,
            "reply_timeouts": self.reply_timeouts,
            "downlink_dropped": self._downlink_sub.dropped if self._downlink_sub else 0,
            "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()),
            "reopens": max(0, self.opens - 1),
            "last_error": self.last_error,
        }

    # ---- tasks ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            if self.config.downlink:
                sub = self.client.subscribe(self.config.downlink, pending_msgs=DOWNLINK_PENDING)
                self._downlink_sub = sub
                nursery.start_soon(self._downlink, sub)
            task_status.started()
            await self._supervise()

    async def _supervise(self) -> None:
        backoff = self.config.retry_min
        while True:
            opened = False
            try:
                self._open()
                opened = True
                await self._read_loop()
            except (OSError, serial.SerialException, _PortGone) as exc:
                # Gone while open, or absent: waiting; there but unusable: error.
                gone = opened or not os.path.exists(self.config.path)
                self._set_state("waiting" if gone else "error", exc)
            except Exception as exc:  # the bridge boundary: never crash the server
                log.exception("serial_bridge_failed", port=self.name)
                self._set_state("error", exc)
            finally:
                self._close()
            if opened:
                backoff = self.config.retry_min
            await trio.sleep(backoff * random.uniform(0.5, 1.0))
            backoff = min(backoff * 2, self.config.retry_max)

    def _open(self) -> None:
        cfg = self.config
        port = serial.Serial(
            cfg.path,
            cfg.baud,
            bytesize=cfg.bytesize,
            parity=_PARITY[cfg.parity],
            stopbits=cfg.stopbits,
            xonxoff=cfg.xonxoff,
            rtscts=cfg.rtscts,
            timeout=0,
            write_timeout=0,
            exclusive=True,
        )
        self._port = port
        self._fd = port.fileno()
        self.opens += 1
        self.last_error = ""
        self.state = "open"
        log.info("serial_port_open", port=self.name, path=cfg.path, baud=cfg.baud, opens=self.opens)

    def _close(self) -> None:
        fd, port = self._fd, self._port
        self._fd = self._port = None
        if fd is not None:
            trio.lowlevel.notify_closing(fd)
        if port is not None:
            with contextlib.suppress(OSError, serial.SerialException):
                port.close()  # may fail: already gone with the device

    def _set_state(self, state: str, exc: BaseException) -> None:
        error = str(exc) or type(exc).__name__
        if (state, error) != (self.state, self.last_error):
            log.warning("serial_port_" + state, port=self.name, path=self.config.path, error=error)
        self.state = state
        self.last_error = error

    async def _read_loop(self) -> None:
        cfg = self.config
        decoder: Decoder = make_decoder(
            cfg.framing,
            max_frame=cfg.max_frame,
            columns=cfg.columns,
            csv_delimiter=cfg.csv_delimiter,
            length_bytes=cfg.length_bytes,
        )
        fd = self._fd
        assert fd is not None
        while True:
            await trio.lowlevel.wait_readable(fd)
            try:
                data = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            if not data:
                raise _PortGone("end of file: the device went away")
            self.bytes_in += len(data)
            headers = ((RECEIVED, received_stamp()), (PORT, self.name))
            for event in decoder.feed(data):
                if isinstance(event, Rejection):
                    self._reject(event.reason, event.detail)
                else:
                    self._frame(event, headers)
            await self.client.wait_room()

    # ---- frames ---------------------------------------------------------------------

    def _frame(self, frame: Frame, headers: tuple[tuple[str, str], ...]) -> None:
        self.frames_in += 1
        if self._reply and self._answered is not None and not self._answered.is_set():
            self._answer(frame, headers)
            return
        if not self._take_token():
            self._reject("flood", f"more than {self.config.max_rate:g} frames/s")
            return
        try:
            subject = self.config.subject.render(self.name, frame.fields)
        except RenderError as exc:
            self._reject(exc.reason, str(exc))
            return
        try:
            heard = self.client.publish(subject, frame.payload, headers=headers)
        except PublishError as exc:
            self._reject("publish_error", str(exc))
            return
        self.published += 1
        if not heard:
            self.no_interest += 1

    def _answer(self, frame: Frame, headers: tuple[tuple[str, str], ...]) -> None:
        assert self._answered is not None
        try:
            self.client.publish(self._reply, frame.payload, headers=headers)
            self.replies += 1
        except PublishError as exc:
            self._reject("publish_error", str(exc))
        self._answered.set()

    def _take_token(self) -> bool:
        now = trio.current_time()
        cfg = self.config
        self._tokens = min(float(cfg.burst), self._tokens + (now - self._refilled) * cfg.max_rate)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        decision = self._warn.check(reason, trio.current_time())
        if decision.log:
            log.warning(
                "serial_input_rejected",
                port=self.name,
                reason=reason,
                detail=detail,
                count=self.rejected[reason],
                suppressed=decision.suppressed,
            )

    # ---- downlink ---------------------------------------------------------------------

    async def _downlink(self, sub: LocalSubscription) -> None:
        async for msg in sub:
            await self._write_one(msg)

    async def _write_one(self, msg: LocalMsg) -> None:
        cfg = self.config
        try:
            data = encode_downlink(
                cfg.framing, msg.data, line_ending=cfg.line_ending, length_bytes=cfg.length_bytes
            )
        except ValueError as exc:
            self._reject("downlink_error", str(exc))
            self._error_reply(msg, "400", str(exc))
            return
        if self._fd is None:
            self._reject("downlink_error", "port not open")
            self._error_reply(msg, "503", f"port {self.name} is {self.state}")
            return
        if msg.reply:
            self._reply, self._answered = msg.reply, trio.Event()
        try:
            try:
                await self._write(data)
            except (OSError, trio.TooSlowError, trio.ClosedResourceError) as exc:
                # ClosedResourceError: the port went away (closed by the port
                # task) while this write waited for room.
                self._reject("downlink_error", str(exc) or type(exc).__name__)
                self._error_reply(msg, "503", f"write failed: {exc}")
                return
            self.written += 1
            if msg.reply and self._answered is not None:
                with trio.move_on_after(cfg.reply_timeout):
                    await self._answered.wait()
                if not self._answered.is_set():
                    self._answered.set()  # a late answer is published as a frame
                    self.reply_timeouts += 1
                    self._error_reply(msg, "408", f"no answer within {cfg.reply_timeout:g} s")
        finally:
            self._reply, self._answered = "", None

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        with trio.fail_after(WRITE_TIMEOUT):
            while view:
                fd = self._fd
                if fd is None:
                    raise OSError("port closed during the write")
                try:
                    done = os.write(fd, view)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(fd)
                    continue
                view = view[done:]

    def _error_reply(self, msg: LocalMsg, status: str, error: str) -> None:
        if not msg.reply:
            return
        # An invalid reply subject from the requester: nobody to tell.
        with contextlib.suppress(PublishError):
            self.client.publish(msg.reply, b"", headers=((STATUS, status), (ERROR, error)))
