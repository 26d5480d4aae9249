"""powerfs: a FUSE file system that passes through to a directory and loses, on
command, every write that was not fsynced, as a power cut loses the page cache.

Run as its own process (``python -m tests.powerfs BACKING MOUNTPOINT --control
SOCK``); the tests drive it through :class:`tests.powerfs.client.PowerFS`.

Data.  Every file's unsynced writes and size changes live in this process's memory
(:class:`tests.powerfs.overlay.Overlay`, 4 KiB pages); reads merge them over the
backing file.  ``fsync``/``fdatasync`` of a file writes its overlay to the backing
file and fsyncs that; nothing else ever writes file data to the backing directory
(no background writeback, no sync on close: the strictest page cache).

Metadata.  Namespace operations (create, mkdir, unlink, rmdir, rename) and
chmod/chown/utimes are applied to the backing directory at once and so survive a
cut with or without a directory fsync: more lenient than a real file system, which
may lose a recent create or rename unless the directory was fsynced.  A created
file survives a cut empty (its data is in its overlay until fsync); a renamed file
keeps its overlay under the new name; an unlinked file's overlay goes with it.
``fsyncdir`` is accepted and counted.  Hard links, symlinks, device nodes,
extended attributes and ``RENAME_EXCHANGE`` are not supported (ENOSYS / EINVAL).

Cut.  The control command ``cut [KEEP SEED]`` discards every overlay and turns the
power off: until ``on``, every request that reads or changes data or names fails
with EIO, so a frozen process killed afterwards can write nothing more (its
close-time flushes fail, as they would on a dead machine).  With ``KEEP`` > 0 each
dirty page (and each pending truncation) is first written back with that
probability, drawn from ``SEED``: the kernel may have written some pages back in
the background before the power went.  ``on`` turns the power back on and drops
the kernel's cached pages and attributes of every file, so readers see the backing
directory.

Kernel caching.  Files are opened with ``keep_cache`` and without ``direct_io``:
the kernel's page cache stays coherent with the overlay because every write goes
through this process (no writeback cache), and shared writable ``mmap`` (SQLite's
``-shm``) works; dirty mmapped pages reach the overlay when the kernel writes them
back (at the latest on close).  Attributes and entries are not cached (timeouts 0),
so sizes always come from the overlay.

``sync`` writes every overlay back, as sync(1) (or the kernel's periodic
writeback, which this file system otherwise never does) would: for a setup that
should count as long past when the cuts begin.

Control protocol (unix stream socket, one line each way, replies in JSON):
``stats`` -> counters; ``cut [KEEP SEED]`` -> what was discarded; ``on`` -> ``{}``;
``sync`` -> how many files were written back.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import os
import random
import signal
import stat
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import pyfuse3
import trio

from tests.powerfs.overlay import Overlay

P = ParamSpec("P")
R = TypeVar("R")


def _oserror(
    fn: Callable[P, Coroutine[Any, Any, R]],
) -> Callable[P, Coroutine[Any, Any, R]]:
    """A handler may raise only FUSEError: an OSError becomes its errno."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except OSError as exc:
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None

    return wrapper


@dataclass
class Node:
    """One file or directory the kernel knows, by our inode number."""

    ino: int
    path: str | None  # relative to the backing root; None once unlinked
    is_dir: bool
    lookups: int = 0
    opens: int = 0
    fd: int | None = None  # backing file, opened read-write on first use
    overlay: Overlay | None = None


@dataclass
class Stats:
    writes: int = 0
    written_bytes: int = 0
    reads: int = 0
    fsyncs: int = 0
    fsyncdirs: int = 0
    cuts: int = 0
    refused: int = 0  # requests failed with EIO while the power was off
    extra: dict[str, int] = field(default_factory=dict)


class PowerFS(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, root: str) -> None:
        super().__init__()
        self.root = os.path.realpath(root)
        st = os.lstat(self.root)
        self.nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, "", True)}
        self.by_key: dict[tuple[int, int], int] = {(st.st_dev, st.st_ino): pyfuse3.ROOT_INODE}
        self.next_ino = pyfuse3.ROOT_INODE + 1
        self.power = True
        self.stats = Stats()

    # ---- inode table ---------------------------------------------------------

    def _full(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise pyfuse3.FUSEError(errno.ESTALE)
        return node

    def _path(self, ino: int) -> str:
        node = self._node(ino)
        if node.path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node.path

    def _child(self, parent: int, name: bytes) -> str:
        return os.path.join(self._path(parent), os.fsdecode(name))

    def _adopt(self, rel: str, st: os.stat_result) -> Node:
        """The node for a backing entry (found again by device and inode number)."""
        key = (st.st_dev, st.st_ino)
        ino = self.by_key.get(key)
        if ino is not None:
            node = self.nodes[ino]
            node.path = rel
            return node
        node = Node(self.next_ino, rel, stat.S_ISDIR(st.st_mode))
        self.next_ino += 1
        self.nodes[node.ino] = node
        self.by_key[key] = node.ino
        return node

    def _node_at(self, rel: str) -> Node | None:
        try:
            st = os.lstat(self._full(rel))
        except FileNotFoundError:
            return None
        ino = self.by_key.get((st.st_dev, st.st_ino))
        return self.nodes.get(ino) if ino is not None else None

    def _stat(self, node: Node) -> os.stat_result:
        if node.fd is not None:
            return os.fstat(node.fd)
        if node.path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return os.lstat(self._full(node.path))

    def _attrs(self, node: Node) -> pyfuse3.EntryAttributes:
        st = self._stat(node)
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = pyfuse3.InodeT(node.ino)
        attr.generation = 0
        attr.entry_timeout = 0
        attr.attr_timeout = 0
        attr.st_mode = pyfuse3.ModeT(st.st_mode)
        attr.st_nlink = st.st_nlink
        attr.st_uid = st.st_uid
        attr.st_gid = st.st_gid
        attr.st_rdev = st.st_rdev
        size = node.overlay.size if node.overlay is not None else st.st_size
        attr.st_size = size
        attr.st_blksize = 4096
        attr.st_blocks = (size + 511) // 512
        attr.st_atime_ns = st.st_atime_ns
        attr.st_mtime_ns = st.st_mtime_ns
        attr.st_ctime_ns = st.st_ctime_ns
        return attr

    def _looked_up(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = self._attrs(node)
        node.lookups += 1
        return attr

    # ---- data ----------------------------------------------------------------

    def _alive(self) -> None:
        if not self.power:
            self.stats.refused += 1
            raise pyfuse3.FUSEError(errno.EIO)

    def _fd(self, node: Node) -> int:
        if node.fd is None:
            if node.path is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            node.fd = os.open(self._full(node.path), os.O_RDWR | os.O_CLOEXEC)
        return node.fd

    def _overlay(self, node: Node) -> Overlay:
        if node.overlay is None:
            node.overlay = Overlay(os.fstat(self._fd(node)).st_size)
        return node.overlay

    def _io(self, node: Node) -> tuple[Any, Any, Any]:
        fd = self._fd(node)

        def pread(off: int, n: int) -> bytes:
            return os.pread(fd, n, off)

        def pwrite(off: int, data: bytes) -> None:
            view = memoryview(data)
            while view:
                view = view[os.pwrite(fd, view, off + len(data) - len(view)) :]

        def ftruncate(size: int) -> None:
            os.ftruncate(fd, size)

        return pread, pwrite, ftruncate

    def dirty(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.overlay is not None and n.overlay.dirty]

    # ---- control -------------------------------------------------------------

    def cut(self, keep: float, seed: int) -> dict[str, Any]:
        rng = random.Random(seed)
        dropped_pages = written_back = files = 0
        for node in self.dirty():
            overlay = node.overlay
            assert overlay is not None
            files += 1
            if keep > 0:
                _, pwrite, ftruncate = self._io(node)
                chosen = {i for i in overlay.pages if rng.random() < keep}
                overlay.partial_writeback(
                    chosen.__contains__, rng.random() < keep, pwrite, ftruncate
                )
                written_back += len(chosen)
            dropped_pages += len(overlay.pages)
        for node in self.nodes.values():
            node.overlay = None
        self.power = False
        self.stats.cuts += 1
        return {
            "files": files,
            "dirty_pages": dropped_pages,
            "written_back": written_back,
            "lost_pages": dropped_pages - written_back,
        }

    def sync_all(self) -> dict[str, Any]:
        """Write every overlay back, as sync(1) or the kernel's periodic writeback."""
        files = 0
        for node in self.dirty():
            assert node.overlay is not None
            _, pwrite, ftruncate = self._io(node)
            node.overlay.flush(pwrite, ftruncate)
            os.fsync(self._fd(node))
            files += 1
        return {"files": files}

    def status(self) -> dict[str, Any]:
        dirty = self.dirty()
        return {
            "power": self.power,
            "writes": self.stats.writes,
            "written_bytes": self.stats.written_bytes,
            "reads": self.stats.reads,
            "fsyncs": self.stats.fsyncs,
            "fsyncdirs": self.stats.fsyncdirs,
            "cuts": self.stats.cuts,
            "refused": self.stats.refused,
            "dirty_files": len(dirty),
            "dirty_bytes": sum(n.overlay.dirty_bytes for n in dirty if n.overlay),
            "files": sorted(n.path for n in dirty if n.path is not None),
        }

    def known_inodes(self) -> list[int]:
        return [ino for ino in self.nodes if ino != pyfuse3.ROOT_INODE]

    # ---- entries ---------------------------------------------------------------

    @_oserror
    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        self._alive()
        parent = self._path(parent_inode)
        if name == b".":
            rel = parent
        elif name == b"..":
            rel = os.path.dirname(parent)
        else:
            rel = self._child(parent_inode, name)
        try:
            st = os.lstat(self._full(rel))
        except FileNotFoundError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None
        return self._looked_up(self._adopt(rel, st))

    async def forget(self, inode_list: Any) -> None:
        for ino, count in inode_list:
            node = self.nodes.get(ino)
            if node is None or ino == pyfuse3.ROOT_INODE:
                continue
            node.lookups = max(0, node.lookups - count)
            # Only a file that is gone is dropped: a linked one may hold unsynced data
            # (its page cache), and the kernel may look it up again.
            if node.lookups == 0 and node.opens == 0 and node.path is None:
                self._drop(node)

    def _drop(self, node: Node) -> None:
        if node.fd is not None:
            os.close(node.fd)
        del self.nodes[node.ino]
        for key, ino in list(self.by_key.items()):
            if ino == node.ino:
                del self.by_key[key]

    @_oserror
    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._attrs(self._node(inode))

    @_oserror
    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._alive()
        node = self._node(inode)
        if fields.update_size:
            self._overlay(node).truncate(attr.st_size)
        target: int | str = node.fd if node.fd is not None else self._full(self._path(inode))
        if fields.update_mode:
            os.chmod(target, stat.S_IMODE(attr.st_mode))
        if fields.update_uid or fields.update_gid:
            os.chown(
                target,
                attr.st_uid if fields.update_uid else -1,
                attr.st_gid if fields.update_gid else -1,
            )
        if fields.update_atime or fields.update_mtime:
            st = self._stat(node)
            os.utime(
                target,
                ns=(
                    attr.st_atime_ns if fields.update_atime else st.st_atime_ns,
                    attr.st_mtime_ns if fields.update_mtime else st.st_mtime_ns,
                ),
            )
        return self._attrs(node)

    @_oserror
    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        self._alive()
        rel = self._child(parent_inode, name)
        os.mkdir(self._full(rel), stat.S_IMODE(mode))
        return self._looked_up(self._adopt(rel, os.lstat(self._full(rel))))

    @_oserror
    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        self._alive()
        rel = self._child(parent_inode, name)
        node = self._node_at(rel)
        os.rmdir(self._full(rel))
        if node is not None:
            node.path = None

    @_oserror
    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        self._alive()
        rel = self._child(parent_inode, name)
        node = self._node_at(rel)
        os.unlink(self._full(rel))
        if node is not None:
            node.path = None
            if node.lookups == 0 and node.opens == 0:
                self._drop(node)

    @_oserror
    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self._alive()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        replaced = self._node_at(new)
        if flags & pyfuse3.RENAME_NOREPLACE and replaced is not None:
            raise pyfuse3.FUSEError(errno.EEXIST)
        moved = self._node_at(old)
        os.rename(self._full(old), self._full(new))
        if replaced is not None and replaced is not moved:
            replaced.path = None
        if moved is not None:
            moved.path = new
            if moved.is_dir:
                for node in self.nodes.values():
                    if node.path is not None and node.path.startswith(old + os.sep):
                        node.path = new + node.path[len(old) :]

    # ---- files -------------------------------------------------------------------

    @_oserror
    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: pyfuse3.ModeT,
        flags: pyfuse3.FlagT,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._alive()
        rel = self._child(parent_inode, name)
        excl = os.O_EXCL if flags & os.O_EXCL else 0
        fd = os.open(self._full(rel), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | excl, mode)
        node = self._adopt(rel, os.fstat(fd))
        if node.fd is None:
            node.fd = fd
        else:
            os.close(fd)
        if flags & os.O_TRUNC:
            self._overlay(node).truncate(0)
        node.opens += 1
        attr = self._looked_up(node)
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(node.ino), keep_cache=True), attr

    @_oserror
    async def open(
        self, inode: pyfuse3.InodeT, flags: pyfuse3.FlagT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        self._alive()
        node = self._node(inode)
        self._fd(node)
        node.opens += 1
        return pyfuse3.FileInfo(fh=pyfuse3.FileHandleT(node.ino), keep_cache=True)

    @_oserror
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        self._alive()
        node = self._node(fh)
        pread, _, _ = self._io(node)
        self.stats.reads += 1
        return self._overlay(node).read(off, size, pread)

    @_oserror
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        self._alive()
        node = self._node(fh)
        pread, _, _ = self._io(node)
        self._overlay(node).write(off, bytes(buf), pread)
        self.stats.writes += 1
        self.stats.written_bytes += len(buf)
        return len(buf)

    @_oserror
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        self._alive()
        node = self._node(fh)
        _, pwrite, ftruncate = self._io(node)
        if node.overlay is not None:
            node.overlay.flush(pwrite, ftruncate)
        fd = self._fd(node)
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)
        self.stats.fsyncs += 1

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        self._alive()  # close() does not sync; on a dead machine it fails

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        node = self.nodes.get(fh)
        if node is None:
            return
        node.opens = max(0, node.opens - 1)
        if node.opens == 0 and node.lookups == 0 and node.path is None:
            self._drop(node)

    # ---- directories ---------------------------------------------------------------

    @_oserror
    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        self._alive()
        self._path(inode)
        return pyfuse3.FileHandleT(inode)

    @_oserror
    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        self._alive()
        parent = self._path(fh)
        names = sorted(os.listdir(self._full(parent)))
        for index in range(start_id, len(names)):
            rel = os.path.join(parent, names[index])
            try:
                node = self._adopt(rel, os.lstat(self._full(rel)))
            except FileNotFoundError:
                continue
            attr = self._attrs(node)
            if not pyfuse3.readdir_reply(token, os.fsencode(names[index]), attr, index + 1):
                break
            node.lookups += 1

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        return None

    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        self._alive()
        self.stats.fsyncdirs += 1  # the namespace is durable at once (module docstring)

    @_oserror
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = os.statvfs(self.root)
        out = pyfuse3.StatvfsData()
        for name in (
            "f_bsize",
            "f_frsize",
            "f_blocks",
            "f_bfree",
            "f_bavail",
            "f_files",
            "f_ffree",
            "f_favail",
        ):
            setattr(out, name, getattr(sv, name))
        out.f_namemax = sv.f_namemax
        return out


# ---- the process -----------------------------------------------------------------


async def _invalidate_all(fs: PowerFS) -> None:
    """Drop the kernel's cached pages and attributes of every file we know (in a
    thread: the kernel may first write dirty mmapped pages back through us)."""

    def run() -> None:
        for ino in fs.known_inodes():
            with contextlib.suppress(OSError):  # the kernel already forgot it
                pyfuse3.invalidate_inode(pyfuse3.InodeT(ino), attr_only=False)

    await trio.to_thread.run_sync(run)


async def _command(fs: PowerFS, line: str) -> dict[str, Any]:
    words = line.split()
    if not words:
        return {"error": "empty command"}
    if words[0] == "stats":
        return fs.status()
    if words[0] == "cut":
        keep = float(words[1]) if len(words) > 1 else 0.0
        seed = int(words[2]) if len(words) > 2 else 0
        result = fs.cut(keep, seed)
        await _invalidate_all(fs)
        return result
    if words[0] == "sync":
        return fs.sync_all()
    if words[0] == "on":
        fs.power = True
        await _invalidate_all(fs)
        return {}
    return {"error": f"unknown command {words[0]!r}"}


async def _serve_client(fs: PowerFS, stream: trio.SocketStream) -> None:
    buf = b""
    async with stream:
        while True:
            with trio.move_on_after(30):
                chunk = await stream.receive_some(4096)
            if not chunk:
                return
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    reply = await _command(fs, line.decode())
                except (ValueError, OSError) as exc:
                    reply = {"error": str(exc)}
                await stream.send_all(json.dumps(reply).encode() + b"\n")


async def _control(fs: PowerFS, path: str, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen(8)
    listener = trio.SocketListener(sock)
    task_status.started()
    await trio.serve_listeners(functools.partial(_serve_client, fs), [listener])


async def _run(fs: PowerFS, control: str, ready: str | None) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(_control, fs, control)
        if ready:
            with open(ready, "w") as f:
                f.write(str(os.getpid()))
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            nursery.start_soon(_until_signal, signals)
            await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _until_signal(signals: Any) -> None:
    async for _ in signals:
        pyfuse3.terminate()
        return


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.powerfs", description=__doc__)
    parser.add_argument("backing", help="directory holding what is on 'disk'")
    parser.add_argument("mountpoint")
    parser.add_argument("--control", required=True, help="unix socket for cut/on/stats")
    parser.add_argument("--ready", help="file written (with our pid) once mounted")
    args = parser.parse_args(argv)
    fs = PowerFS(args.backing)
    options = {"fsname=powerfs", "subtype=powerfs", "default_permissions"}
    pyfuse3.init(fs, args.mountpoint, options)
    try:
        trio.run(_run, fs, args.control, args.ready)
    finally:
        pyfuse3.close(unmount=True)
    return 0
