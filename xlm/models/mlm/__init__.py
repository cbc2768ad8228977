"""MLM: masked language model, generating by iterative unmasking of a block of [MASK]s."""

from xlm.registry import Family, register_family

from .config import MlmConfig, mlm_arch, mlm_archs
from .factory import create_mlm_model
from .loss import mlm_loss
from .interop import CONVERTERS
from .model import MlmModel
from .predictor import MlmPredictor, MlmSamplerConfig
from .unit import MlmUnit

register_family(Family(
    name="mlm",
    config_class=MlmConfig,
    archs=mlm_archs,
    factory=create_mlm_model,
    unit_factory=MlmUnit,
    converters=CONVERTERS,
    sampler_config_class=MlmSamplerConfig,
))

__all__ = ["MlmConfig", "MlmModel", "MlmPredictor", "MlmSamplerConfig", "MlmUnit", "create_mlm_model",
           "mlm_arch", "mlm_archs", "mlm_loss"]
