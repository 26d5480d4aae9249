"""Store-and-forward: the SQLite buffer that keeps messages meant for the hub.

* ``paths``: where the store lives (pure).
* ``db``: opening the database, pragmas, migrations, the integrity check and
  setting a damaged store aside (synchronous, run in the writer's thread).
* ``buffer``: the synchronous operations on an open store, one transaction each.
* ``groups``: subject groups, limits and policies, counters (pure).
* ``window``: the uplink's in-flight window and confirmation bookkeeping (pure).
* ``writer``: the Trio shell: the one writer (group commit), the feed the
  uplink reads from, limits and the free-disk floor.
* ``tool``: the ``leafgate store`` operator commands.
"""
