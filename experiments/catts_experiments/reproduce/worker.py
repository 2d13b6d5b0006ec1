"""``python -m catts_experiments.reproduce.worker OUT``: the reproduction's training chain for the
run in ``OUT`` (:func:`catts_experiments.reproduce.run.start_worker` starts it). A module of its own,
which the package does not import, so that ``-m`` runs it without importing it twice."""

from __future__ import annotations

import sys

from catts_experiments.reproduce.run import worker_main

if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
