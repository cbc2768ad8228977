"""ILM: insertion language model (Patel et al. 2025), generating by inserting tokens at arbitrary
positions, one (gap, token) pair at a time, until a stopping classifier says the sequence is done."""

from xlm.registry import Family, register_family

from .config import IlmConfig, ilm_arch, ilm_archs
from .factory import create_ilm_model
from .interop import CONVERTERS
from .loss import ilm_loss
from .model import IlmModel, IlmOutput
from .predictor import IlmPredictor, IlmSamplerConfig
from .unit import IlmUnit

register_family(Family(
    name="ilm",
    config_class=IlmConfig,
    archs=ilm_archs,
    factory=create_ilm_model,
    unit_factory=IlmUnit,
    converters=CONVERTERS,
    sampler_config_class=IlmSamplerConfig,
))

__all__ = ["IlmConfig", "IlmModel", "IlmOutput", "IlmPredictor", "IlmSamplerConfig", "IlmUnit", "create_ilm_model",
           "ilm_arch", "ilm_archs", "ilm_loss"]
