"""Side-by-side benchmark: leafgate against a real nats-server on the same load.

Both servers are started as subprocesses on 127.0.0.1 with an ephemeral port
(``-a 127.0.0.1 -p -1 --ports_file_dir DIR``); the port is read from the
``<prog>_<pid>.ports`` file the server writes.  A fresh server is started for every
case and every run, and the two sides alternate so that both see the same machine.

The load generator is deliberately dumb so that it is not the bottleneck: one forked
process per connection, raw sockets, publishers ``sendall`` a large pre-built buffer
of identical ``PUB`` commands, subscribers only count received bytes and divide by
the exact size of one ``MSG`` frame.  Only the request/reply cases parse anything.

The ``leaf_*`` cases measure the leafnode link instead: a fresh nats-server hub per
run (``leafnodes { listen }``), and as the leaf either leafgate (``--hub``) or a
nats-server with a ``leafnodes { remotes }`` config; load on one end of the link, the
counting end on the other.  Both kinds of leaf may drop messages when the link is
saturated (core NATS semantics), so the receiving end's count is what is reported.

Modules: ``common`` (constants, the case table), ``protocol`` (raw-socket NATS bits),
``servers`` (starting/stopping servers, hubs and leaves; /proc figures), ``loadgen``
(the worker processes), ``cases`` and ``leafcases`` (the case runners), ``report``
(medians, table, JSON) and ``cli`` (options and the run loop).

Run ``python -m edge.bench --help`` (or ``leafgate bench --help``) for the options.
"""

from __future__ import annotations

from .cli import main

__all__ = ["main"]
