"""Training code for catts-graph on TRL: CDRL (confidence-driven reinforcement learning) and
MMBoundary (step-level confidence statements).

See :mod:`training.cdrl`, :mod:`training.mmboundary` and ``training/README.md``.
"""
