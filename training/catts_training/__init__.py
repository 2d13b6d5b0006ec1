"""Training code for catts-graph on TRL: CDRL (confidence-driven reinforcement learning) and
MMBoundary (step-level confidence statements).

The repository keeps it under ``training/`` (``training/catts_training/`` the code,
``training/configs/`` the configs, ``training/README.md`` the guide); installed, it is the package
``catts_training``, with the configs inside it as ``catts_training/configs/``. It sits above
``catts_graph`` and is never imported by it.

See :mod:`catts_training.cdrl`, :mod:`catts_training.mmboundary` and ``training/README.md``.
"""
