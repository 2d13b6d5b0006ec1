"""catts_experiments: the model organism as an application on top of the library.

The library (:mod:`catts_graph`) ships the organisms and runs them (:mod:`catts_graph.organism`).
This package makes and studies them: training the organisms, the CLIP organism and the reflection
(:mod:`~catts_experiments.train`, :mod:`~catts_experiments.clip`,
:mod:`~catts_experiments.reflection`), measuring them (:mod:`~catts_experiments.evaluate`,
:mod:`~catts_experiments.step_calibration`), choosing settings on validation
(:mod:`~catts_experiments.tune`), and reproducing every number of ``docs/organism.md``
(:mod:`~catts_experiments.reproduce`). Its commands (``catts train organism``, ``catts measure ...``,
``catts tune ...``, ``catts reproduce``) are registered in :mod:`~catts_experiments.commands`.

It lives in ``experiments/`` of the repository and installs as the top-level ``catts_experiments``.
It imports the library, never the reverse; it sits beside ``catts_training``, not above it: the
reproduction runs CDRL and MMBoundary through their command line in a process of their own
(:mod:`~catts_experiments.reproduce.training`), so nothing here imports the training package.
"""
