"""The page cache of one file, as a power cut sees it: what was written and not yet
fsynced.

Theory of operation.  The backing file holds exactly what is on "disk": what was
there when the file system started plus what fsync wrote.  An :class:`Overlay`
holds everything since its file's last fsync, in 4 KiB pages as a kernel does:

* ``pages``: dirty pages, whole (a page first written is filled from the backing
  file, so flushing it whole writes back only what was already there);
* ``size``: the file's logical size (writes past the end grow it, truncate sets it);
* ``floor``: the lowest size the file had since the last flush.  Backing bytes at
  or past ``floor`` were truncated away and read as zeros until a write covers them
  (a file shrunk and grown again must not show its old tail).

Reads merge the dirty pages over the backing file, clipped to ``size``.
:meth:`Overlay.flush` (what fsync does) applies the truncation, writes the dirty
pages and sets the backing size; then the overlay is clean.  A power cut throws the
overlay away; :meth:`Overlay.partial_writeback` first writes back a chosen subset of
pages, as a kernel's background writeback may have done before the cut.

Pure: the backing file is reached through the callables passed in (``pread(off,
n)``, ``pwrite(off, data)``, ``ftruncate(size)``); no I/O of its own.
"""

from __future__ import annotations

from collections.abc import Callable

PAGE = 4096

Pread = Callable[[int, int], bytes]
Pwrite = Callable[[int, bytes], None]
Ftruncate = Callable[[int], None]


class Overlay:
    """Unsynced state of one file whose backing file is ``base`` bytes long."""

    def __init__(self, base: int) -> None:
        self.base = base  # the backing file's size
        self.size = base
        self.floor = base
        self.pages: dict[int, bytearray] = {}

    @property
    def dirty(self) -> bool:
        return bool(self.pages) or self.size != self.base or self.floor != self.base

    @property
    def dirty_bytes(self) -> int:
        return len(self.pages) * PAGE

    # ---- reading -------------------------------------------------------------

    def _backing(self, off: int, n: int, pread: Pread) -> bytes:
        """``n`` bytes of the backing file at ``off`` as this overlay sees them:
        nothing at or past ``floor`` (truncated), zeros where the file is short."""
        valid = max(0, min(n, self.floor - off))
        data = pread(off, valid) if valid else b""
        return data + bytes(n - len(data))

    def read(self, off: int, n: int, pread: Pread) -> bytes:
        end = min(off + n, self.size)
        if off >= end:
            return b""
        out = bytearray()
        pos = off
        while pos < end:
            index, within = divmod(pos, PAGE)
            page = self.pages.get(index)
            if page is not None:
                take = min(PAGE - within, end - pos)
                out += page[within : within + take]
            else:
                # A run of clean pages in one backing read.
                run_end = pos + (PAGE - within)
                while run_end < end and run_end // PAGE not in self.pages:
                    run_end += PAGE
                take = min(run_end, end) - pos
                out += self._backing(pos, take, pread)
            pos += take
        return bytes(out)

    # ---- writing -------------------------------------------------------------

    def _page(self, index: int, pread: Pread) -> bytearray:
        page = self.pages.get(index)
        if page is None:
            page = bytearray(self._backing(index * PAGE, PAGE, pread))
            # Past the logical end a page holds zeros whatever the backing file says.
            tail = self.size - index * PAGE
            if 0 <= tail < PAGE:
                page[tail:] = bytes(PAGE - tail)
            elif tail < 0:
                page[:] = bytes(PAGE)
            self.pages[index] = page
        return page

    def write(self, off: int, data: bytes, pread: Pread) -> None:
        pos = 0
        while pos < len(data):
            index, within = divmod(off + pos, PAGE)
            take = min(PAGE - within, len(data) - pos)
            self._page(index, pread)[within : within + take] = data[pos : pos + take]
            pos += take
        self.size = max(self.size, off + len(data))

    def truncate(self, size: int) -> None:
        if size < self.size:
            for index in [i for i in self.pages if i * PAGE >= size]:
                del self.pages[index]
            index, within = divmod(size, PAGE)
            page = self.pages.get(index)
            if page is not None:
                page[within:] = bytes(PAGE - within)
            self.floor = min(self.floor, size)
        self.size = size

    # ---- flushing ------------------------------------------------------------

    def _write_page(self, index: int, pwrite: Pwrite) -> int:
        """Write one dirty page, clipped to the logical size; the end written."""
        start = index * PAGE
        length = min(PAGE, self.size - start)
        if length > 0:
            pwrite(start, bytes(self.pages[index][:length]))
        return start + max(0, length)

    def flush(self, pwrite: Pwrite, ftruncate: Ftruncate) -> None:
        """Make the backing file equal to what reads return; the overlay is clean after."""
        if self.floor < self.base:
            ftruncate(self.floor)
        for index in sorted(self.pages):
            self._write_page(index, pwrite)
        ftruncate(self.size)
        self.base = self.floor = self.size
        self.pages = {}

    def partial_writeback(
        self,
        chosen: Callable[[int], bool],
        apply_truncation: bool,
        pwrite: Pwrite,
        ftruncate: Ftruncate,
    ) -> None:
        """Write back the dirty pages ``chosen(index)`` picks, as background writeback
        before a cut.  A pending truncation is applied when ``apply_truncation`` or
        when a chosen page lies past ``floor`` (a page is never written back over a
        stale tail).  The backing size grows only with the data written, as delayed
        allocation does.  The overlay is left as it was: the cut discards it."""
        picked = sorted(i for i in self.pages if chosen(i))
        past_floor = any((i + 1) * PAGE > self.floor for i in picked)
        base = self.base
        if self.floor < self.base and (apply_truncation or past_floor):
            ftruncate(self.floor)
            base = self.floor
        for index in picked:
            end = self._write_page(index, pwrite)
            base = max(base, end)
        self.base = base
