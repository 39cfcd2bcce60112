"""The network runtime: real peer processes that find each other over a Kademlia DHT and exchange
signed, content-addressed models over TCP, running the same cooperation rules as the simulator."""

from ppaia.network.agreement import Agreement
from ppaia.network.checkpoint import Checkpoint, CheckpointError
from ppaia.network.content import cid_of, parse_cid
from ppaia.network.dht import PeerDHT, parse_address
from ppaia.network.errors import NetworkError, ProtocolError, Reason
from ppaia.network.identity import Identity, IdentityError, peer_id_of, verify_signature
from ppaia.network.learner import PeerLearner
from ppaia.network.peer import Peer, PeerOptions
from ppaia.network.records import PeerRecord, ProviderRecord
from ppaia.network.status import PeerStatus, Phase
from ppaia.network.swarm import Swarm
from ppaia.network.transfer import BanList, ModelServer, NotReady, fetch_model, fetch_status

__all__ = [
    "Agreement",
    "BanList",
    "Checkpoint",
    "CheckpointError",
    "Identity",
    "IdentityError",
    "ModelServer",
    "NetworkError",
    "NotReady",
    "Peer",
    "PeerDHT",
    "PeerLearner",
    "PeerOptions",
    "PeerRecord",
    "PeerStatus",
    "Phase",
    "ProtocolError",
    "ProviderRecord",
    "Reason",
    "Swarm",
    "cid_of",
    "fetch_model",
    "fetch_status",
    "parse_address",
    "parse_cid",
    "peer_id_of",
    "verify_signature",
]
