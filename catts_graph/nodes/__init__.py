"""The graph's nodes, one small module each (``make_<node>(deps)`` returns the node function).

A node reads the state, calls what it needs from the layers below (models, experts, scoring and
policy) and returns a state update with its trace entry; the logic lives below, the node stays
thin.
"""
