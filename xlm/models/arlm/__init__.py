"""ARLM: the autoregressive (left-to-right) family."""

from xlm.registry import Family, register_family

from .config import ArlmConfig, arlm_arch, arlm_archs
from .factory import create_arlm_model
from .interop import CONVERTERS
from .model import ArlmModel
from .predictor import ArlmPredictor, ArlmSamplerConfig
from .unit import ArlmUnit

register_family(Family(
    name="arlm",
    config_class=ArlmConfig,
    archs=arlm_archs,
    factory=create_arlm_model,
    unit_factory=ArlmUnit,
    converters=CONVERTERS,
    sampler_config_class=ArlmSamplerConfig,
))

__all__ = ["ArlmConfig", "ArlmModel", "ArlmPredictor", "ArlmSamplerConfig", "ArlmUnit",
           "arlm_arch", "arlm_archs", "create_arlm_model"]
