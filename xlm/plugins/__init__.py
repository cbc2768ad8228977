"""External model families: discovery (xlm.plugins.discovery) and the scaffold (xlm.plugins.scaffold)."""

from .discovery import (ExternalModelConflictError, ExternalModelError, ExternalModelImportError,
                        ExternalModelNotFoundError, ExternalModelValidationError, ExternalModelWarning,
                        external_card_dirs, external_config_dirs, load_external_models,
                        load_external_models_once, loaded_models)

__all__ = ["ExternalModelConflictError", "ExternalModelError", "ExternalModelImportError",
           "ExternalModelNotFoundError", "ExternalModelValidationError", "ExternalModelWarning",
           "external_card_dirs", "external_config_dirs", "load_external_models", "load_external_models_once",
           "loaded_models"]
