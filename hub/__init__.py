"""The hub side: nats-server configurations, a development hub and stream provisioning.

* ``hub/conf/``: shipped nats-server configs (``single.conf``, ``cluster-node.conf``)
  and the telemetry stream definition (``telemetry-stream.json``); see
  ``hub/README.md``.
* :mod:`hub.tool`: the ``leafgate hub`` command (``start``, ``provision``, ``ledger``,
  ``config``).
* :mod:`hub.provision`: idempotent stream creation with nats-py's JetStream manager.
* :mod:`hub.ledger`: the completeness ledger: per-gateway sequence gaps and duplicates
  in the hub stream (pure accounting; the reading is in :mod:`hub.tool`).
"""
