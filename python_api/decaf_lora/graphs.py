"""Communication graphs and gossip mixing matrices for simulated decentralized training: the public names,
gathered from the modules that do each job.

``N`` agents sit on the nodes of an undirected graph and average their parameters with their neighbours
through a mixing matrix ``W`` (``N x N``, float64), where ``W[i, j]`` is the weight agent ``i`` gives to
agent ``j``: one gossip round maps the stacked parameters ``X`` to ``W @ X``.

The module offers

* :func:`adjacency` -- the built-in graphs listed in :data:`GRAPHS`;
* :func:`load_adjacency` -- a user-given adjacency (``.npy``, text/CSV file, list, array or tensor);
* :func:`mixing_matrix` -- Metropolis-Hastings or uniform weights on a connected graph;
* :func:`check_mixing_matrix` and :func:`spectral_gap` -- validation and the mixing-speed diagnostic;
* :class:`Topology` -- a graph, its weights and an optional time-varying schedule, with a
  :meth:`Topology.matrix` that is a pure function of the communication round (resuming a run needs no
  random-number-generator state).

Where each lives: adjacency matrices in :mod:`decaf_lora.graph_structure`, mixing matrices in
:mod:`decaf_lora.mixing`, :class:`Topology` in :mod:`decaf_lora.topology`.
"""

from __future__ import annotations

from .graph_structure import adjacency, is_connected, load_adjacency
from .mixing import check_mixing_matrix, mixing_matrix, spectral_gap
from .names import GRAPHS, TIME_VARYING, WEIGHTS
from .topology import Topology

__all__ = [
    "GRAPHS",
    "WEIGHTS",
    "TIME_VARYING",
    "adjacency",
    "load_adjacency",
    "is_connected",
    "mixing_matrix",
    "check_mixing_matrix",
    "spectral_gap",
    "Topology",
]
