"""External model families: discovery (xlm.plugins.discovery) and the scaffold (xlm.plugins.scaffold)."""

from .discovery import (ExternalModelConflictError, ExternalModelError, ExternalModelImportError,
                        ExternalModelNotFoundError, ExternalModelValidationError, ExternalModelWarning,
                        external_config_dirs, load_external_models, loaded_models)

__all__ = ["ExternalModelConflictError", "ExternalModelError", "ExternalModelImportError",
           "ExternalModelNotFoundError", "ExternalModelValidationError", "ExternalModelWarning",
           "external_config_dirs", "load_external_models", "loaded_models"]
