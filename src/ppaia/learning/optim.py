"""Optimizers for stacked peers: the math of torch.optim's SGD and Adam, one row per peer.

Written here rather than using torch.optim on the ``[N, D]`` tensor because peers must step
independently: a peer whose data ran out this epoch is masked (no update, no momentum drift) and Adam
keeps a step count per peer. Updates are in place: at thousands of peers, fresh ``[N, D]`` buffers
cost more than the arithmetic. :meth:`OptimizerSpec.torch_optimizer` gives the torch.optim equivalent,
which the reference executor uses, so the parity tests check this code against torch's.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from pydantic import Field, field_validator

from ppaia.registry import Component, Registry

__all__ = ["OPTIMIZERS", "OptimizerSpec"]

State = dict[str, torch.Tensor]
# Factors applied to float32 parameters must be float32 numbers: torch refuses a larger `alpha`, and an eps
# below float32's smallest normal rounds to 0, making Adam's 0/0 on never-updated coordinates NaN.
FLOAT32 = torch.finfo(torch.float32)


class OptimizerSpec(Component):
    """A first-order optimizer with a batched, masked, in-place step over peers and a torch.optim twin."""

    weight_decay: float = Field(default=0.0, ge=0)

    @field_validator("weight_decay")
    @classmethod
    def _float32(cls, weight_decay: float) -> float:
        if weight_decay > FLOAT32.max:
            raise ValueError(f"{weight_decay:g} is beyond float32 (at most {FLOAT32.max:.3g})")
        return weight_decay

    def init_state(self, params: torch.Tensor) -> State:
        return {}

    def step(self, params: torch.Tensor, grads: torch.Tensor, state: State, active: torch.Tensor, lr: float):
        """Update, in place, the rows whose `active` entry is 1.0 ([N, 1] float); others stay as they are."""
        raise NotImplementedError

    def torch_optimizer(self, parameters: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        raise NotImplementedError

    def _decayed(self, params: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        return grads.add_(params, alpha=self.weight_decay) if self.weight_decay else grads


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")


@OPTIMIZERS.register("sgd")
class SGD(OptimizerSpec):
    """Stochastic gradient descent with optional (Nesterov) momentum and L2 weight decay."""

    momentum: float = Field(default=0.0, ge=0, lt=1)
    nesterov: bool = False

    def init_state(self, params: torch.Tensor) -> State:
        return {"momentum": torch.zeros_like(params)} if self.momentum else {}

    def step(self, params, grads, state, active, lr):
        grads = self._decayed(params, grads)
        if self.momentum:
            keep = torch.where(active.bool(), self.momentum, 1.0)  # inactive rows: buffer unchanged
            buffer = state["momentum"].mul_(keep).addcmul_(grads, active)
            grads = grads.add_(buffer, alpha=self.momentum) if self.nesterov else buffer
        params.addcmul_(grads, active * lr, value=-1)

    def torch_optimizer(self, parameters, lr):
        return torch.optim.SGD(
            parameters, lr=lr, momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.weight_decay
        )


@OPTIMIZERS.register("adam")
class Adam(OptimizerSpec):
    """Adam (L2 weight decay added to the gradient, as torch.optim.Adam), step count per peer."""

    beta1: float = Field(default=0.9, ge=0, lt=1)
    beta2: float = Field(default=0.999, ge=0, lt=1)
    eps: float = Field(default=1e-8, gt=0)

    @field_validator("eps")
    @classmethod
    def _normal_float32(cls, eps: float) -> float:
        if not FLOAT32.tiny <= eps <= FLOAT32.max:
            raise ValueError(f"{eps:g} is not a normal float32 ({FLOAT32.tiny:.3g} to {FLOAT32.max:.3g})")
        return eps

    def init_state(self, params: torch.Tensor) -> State:
        zeros = torch.zeros_like(params)
        return {
            "exp_avg": zeros,
            "exp_avg_sq": zeros.clone(),
            "step": torch.zeros(params.shape[0], 1, device=params.device),
        }

    def step(self, params, grads, state, active, lr):
        grads = self._decayed(params, grads)
        steps = state["step"].add_(active).double().clamp(min=1)
        state["exp_avg"].lerp_(grads, (1 - self.beta1) * active)
        keep = torch.where(active.bool(), self.beta2, 1.0)
        state["exp_avg_sq"].mul_(keep).addcmul_(grads * active, grads, value=1 - self.beta2)
        step_size = (lr / (1 - self.beta1**steps)).float() * active
        correction2_sqrt = (1 - self.beta2**steps).sqrt().float()
        denom = (state["exp_avg_sq"].sqrt() / correction2_sqrt).add_(self.eps)
        params.addcdiv_(state["exp_avg"] * step_size, denom, value=-1)

    def torch_optimizer(self, parameters, lr):
        return torch.optim.Adam(
            parameters, lr=lr, betas=(self.beta1, self.beta2), eps=self.eps, weight_decay=self.weight_decay
        )
