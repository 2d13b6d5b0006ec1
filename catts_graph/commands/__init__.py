"""The ``catts`` sub-commands that live beside their subsystems: each module registers its
commands on an ``argparse`` sub-parser. :mod:`catts_graph.cli` imports a module only when its
command is the one run, so ``catts --help`` loads none of them."""
