"""The hub side: nats-server configurations, a development hub and stream provisioning.

* ``hub/conf/``: shipped nats-server configs (``single.conf``, ``cluster-node.conf``)
  and the telemetry stream definition (``telemetry-stream.json``); see
  ``hub/README.md``.
* :mod:`hub.tool`: the ``leafgate hub`` command (``start``, ``provision``, ``config``).
* :mod:`hub.provision`: idempotent stream creation with nats-py's JetStream manager.
"""
