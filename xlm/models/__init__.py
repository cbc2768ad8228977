"""The core model families; importing this package registers them."""

from xlm.models import arlm, ilm, mdlm, mlm  # noqa: F401
