"""Differential privacy for local training, with per-peer accounting by Opacus."""

from ppaia.privacy.accountant import PeerAccountant, noise_for_target
from ppaia.privacy.mechanisms import DPSGD, PRIVACY, PrivacyError, PrivacyMechanism, UpdateDP
from ppaia.privacy.training import PrivateTraining

__all__ = [
    "DPSGD",
    "PRIVACY",
    "PeerAccountant",
    "PrivacyError",
    "PrivacyMechanism",
    "PrivateTraining",
    "UpdateDP",
    "noise_for_target",
]
