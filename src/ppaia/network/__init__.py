"""The network runtime: real peer processes that find each other over a Kademlia DHT and exchange
signed, content-addressed models over TCP, running the same cooperation rules as the simulator."""

from ppaia.network.identity import Identity, IdentityError, peer_id_of, verify_signature

__all__ = ["Identity", "IdentityError", "peer_id_of", "verify_signature"]
