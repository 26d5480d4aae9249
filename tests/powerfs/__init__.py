"""The power-cut fixture: a FUSE file system that keeps unsynced writes in memory and
throws them away on command, as a power cut throws away the page cache.

* ``overlay``: the page model of one file (pure);
* ``fs``: the file system (pyfuse3, trio), run as its own process by
  ``python -m tests.powerfs``; its docstring documents what survives a cut;
* ``client``: :class:`~tests.powerfs.client.PowerFS` (mount, control, unmount) and
  :func:`~tests.powerfs.client.power_cut` (the whole fault on one process).
"""
