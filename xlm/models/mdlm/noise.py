"""Continuous-time absorbing noise: schedules sigma(t), the NELBO weight and the draw of t.

A token is masked at time t with probability 1 - exp(-sigma(t)). The continuous-time NELBO
of the SUBS parameterisation weighs the masked-token log-likelihood by
sigma'(t) / (exp(sigma(t)) - 1), which for the log-linear schedule is exactly 1/t.
"""

from __future__ import annotations

import abc
import math

import torch
from jaxtyping import Float
from torch import Tensor

from .config import MdlmConfig


class NoiseSchedule(abc.ABC):
    """sigma(t) and its derivative on t in [0, 1]; everything else follows from them."""

    def __init__(self, eps: float) -> None:
        self.eps = eps

    @abc.abstractmethod
    def sigma(self, t: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]: ...

    @abc.abstractmethod
    def dsigma(self, t: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]: ...

    def move_chance(self, t: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
        """Probability that a token is [MASK] at time t."""
        return -torch.expm1(-self.sigma(t))

    def loss_weight(self, t: Float[Tensor, "*shape"]) -> Float[Tensor, "*shape"]:
        """sigma'(t) / expm1(sigma(t)): the weight of a masked token's NLL in the NELBO."""
        return self.dsigma(t) / torch.expm1(self.sigma(t))


class LogLinearSchedule(NoiseSchedule):
    """sigma(t) = -log(1 - (1 - eps) t): the masking probability (1 - eps) t is linear in t."""

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.log1p(-(1 - self.eps) * t)

    def dsigma(self, t: Tensor) -> Tensor:
        return (1 - self.eps) / (1 - (1 - self.eps) * t)


class CosineSchedule(NoiseSchedule):
    """sigma(t) = -log(eps + (1 - eps) cos(pi t / 2))."""

    def sigma(self, t: Tensor) -> Tensor:
        return -torch.log(self.eps + (1 - self.eps) * torch.cos(t * math.pi / 2))

    def dsigma(self, t: Tensor) -> Tensor:
        half_pi = math.pi / 2
        return half_pi * (1 - self.eps) * torch.sin(t * half_pi) / (
            self.eps + (1 - self.eps) * torch.cos(t * half_pi))


def build_noise_schedule(config: MdlmConfig) -> NoiseSchedule:
    if config.noise_schedule == "loglinear":
        return LogLinearSchedule(config.noise_eps)
    if config.noise_schedule == "cosine":
        return CosineSchedule(config.noise_eps)
    raise ValueError(f"noise_schedule must be 'loglinear' or 'cosine', got {config.noise_schedule!r}")


def sample_t(batch_size: int, *, sampling_eps: float, antithetic: bool, device: torch.device | str | None = None,
             generator: torch.Generator | None = None) -> Float[Tensor, "batch"]:
    """Training times in [sampling_eps, 1), as the reference draws them.

    Antithetic (low-discrepancy) draws put row i in the stratum [i/B, (i+1)/B) of [0, 1)
    before the eps shift: each t is still uniform, the batch mean has far less variance."""
    u = torch.rand(batch_size, device=device, generator=generator)
    if antithetic:
        u = (u + torch.arange(batch_size, device=device)) / batch_size
    return (1 - sampling_eps) * u + sampling_eps
