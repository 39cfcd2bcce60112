"""Communication graphs and mixing weights."""

from ppaia.topology.graphs import TOPOLOGIES, PeerGraph, Topology, TopologyError, build_graph
from ppaia.topology.mixing import MIXINGS, Mixing, MixingWeights, mixing_step

__all__ = [
    "MIXINGS",
    "TOPOLOGIES",
    "Mixing",
    "MixingWeights",
    "PeerGraph",
    "Topology",
    "TopologyError",
    "build_graph",
    "mixing_step",
]
