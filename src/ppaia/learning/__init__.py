"""Local learning: models, flat parameter layout, batched optimizers, training and evaluation."""

from ppaia.learning.evaluate import BatchedEvaluator
from ppaia.learning.init import INIT_POLICIES, Initialization, InitPolicy, independent_params, seeded_model
from ppaia.learning.layout import ParamLayout
from ppaia.learning.local import BatchedTrainer, LocalData, epoch_order
from ppaia.learning.models import MODELS, ImportedModel, ModelError, ModelSpec
from ppaia.learning.optim import OPTIMIZERS, OptimizerSpec

__all__ = [
    "INIT_POLICIES",
    "MODELS",
    "OPTIMIZERS",
    "BatchedEvaluator",
    "BatchedTrainer",
    "ImportedModel",
    "InitPolicy",
    "Initialization",
    "LocalData",
    "ModelError",
    "ModelSpec",
    "OptimizerSpec",
    "ParamLayout",
    "epoch_order",
    "independent_params",
    "seeded_model",
]
