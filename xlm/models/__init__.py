"""The core model families; importing this package registers them."""

from xlm.models import arlm, mdlm, mlm  # noqa: F401
