"""One module per API collection, each a thin layer over the client's session."""

from .evse_sites import EVSESites
from .suppliers import Suppliers
from .tariffs import Tariffs
from .users import Users

__all__ = ["EVSESites", "Suppliers", "Tariffs", "Users"]
