"""The User documents the unit and hostile-server tests answer with: one spec-valid shape."""

from __future__ import annotations

from typing import Any

UID = "user01HN2NJ9NMRZBXT1H6FT9N7735"


def user_json(users_url: str, email: str = "a@example.com", uid: str = UID) -> dict[str, Any]:
    """A user as ``GET /users/{id}`` serves it; `users_url` is the collection's URL."""
    return {
        "id": uid,
        "url": f"{users_url}/{uid}",
        "email": email,
        "full_name": "Frodo Baggins",
        "joined_at": "2023-06-15T10:00:00Z",
        "terms_consent_datetime": None,
        "default_location": {
            "address_1": "Bag End",
            "address_2": None,
            "postal_code": "HB1 1AA",
            "country_code": "GB",
            "coordinates": None,
            "tariff": None,
            "city": "Hobbiton",
            "state": None,
            "evse_site": None,
        },
        "vehicles": [],
        "evses": [],
    }
