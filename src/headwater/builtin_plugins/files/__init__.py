"""Built-in file streaming actions: ``file.view``, ``file.find`` and ``dir.tree``.

All three read in large blocks in worker threads (``anyio.to_thread.run_sync``), so the
event loop never waits on the disk, and stream their results in batches: memory stays
constant whatever the size of the file or of the tree. Each checks ``ctx.cancelled``
between blocks and closes what it opened in a ``finally``.

The ``headwater.files`` plugin registers them by name
(:mod:`headwater.builtin_plugins.catalogue`); each action has its module (:mod:`.view`,
:mod:`.find`, :mod:`.tree`, imported when a pipeline uses it), the last two sharing the
tree walk of :mod:`.walk`.
"""
