"""Who may see and change what: one owner per dataset, job and model, shared models, admin keys.

Every registry read that answers a caller goes through a `Viewer`: another owner's resource is treated as if it
did not exist (the caller gets the same 404 as for an unknown id), so a key learns nothing of other owners' work.
Models are the exception that sharing makes: a `shared` model can be listed, served and trained from by every key,
and changed by its owner only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import or_

from registry.models import RegisteredModel

PRIVATE, SHARED = "private", "shared"
VISIBILITIES = (PRIVATE, SHARED)


@dataclass(frozen=True)
class Viewer:
    owner: str
    admin: bool = False

    def owns(self, resource_owner: str) -> bool:
        """May act on a resource of `resource_owner` (read and change it)."""
        return self.admin or resource_owner == self.owner

    def can_use(self, model: RegisteredModel) -> bool:
        """May list, serve and train from `model`."""
        return self.owns(model.owner) or model.visibility == SHARED

    def owner_filter(self, column: Any) -> Any:
        """A WHERE clause keeping the rows this viewer owns (True for an admin)."""
        return True if self.admin else column == self.owner

    def usable_models(self) -> Any:
        """A WHERE clause on `RegisteredModel` keeping the models this viewer may use."""
        if self.admin:
            return True
        return or_(RegisteredModel.owner == self.owner, RegisteredModel.visibility == SHARED)


# The embedded single-user mode (auth off) and the system's own processes: everything is theirs.
EVERYONE = Viewer(owner="default", admin=True)
