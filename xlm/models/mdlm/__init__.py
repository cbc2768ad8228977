"""MDLM: masked diffusion language models (Sahoo et al. 2024), a DiT trained on the
continuous-time NELBO with the SUBS parameterisation and sampled ancestrally."""

from xlm.registry import Family, register_family

from .config import MdlmConfig, mdlm_arch, mdlm_archs
from .factory import create_mdlm_model
from .interop import CONVERTERS
from .model import MdlmModel
from .noise import CosineSchedule, LogLinearSchedule, NoiseSchedule, build_noise_schedule, sample_t
from .predictor import MdlmPredictor, MdlmSamplerConfig
from .unit import MdlmUnit

register_family(Family(
    name="mdlm",
    config_class=MdlmConfig,
    archs=mdlm_archs,
    factory=create_mdlm_model,
    unit_factory=MdlmUnit,
    converters=CONVERTERS,
    sampler_config_class=MdlmSamplerConfig,
))

__all__ = ["CosineSchedule", "LogLinearSchedule", "MdlmConfig", "MdlmModel", "MdlmPredictor", "MdlmSamplerConfig",
           "MdlmUnit", "NoiseSchedule", "build_noise_schedule", "create_mdlm_model", "mdlm_arch", "mdlm_archs",
           "sample_t"]
