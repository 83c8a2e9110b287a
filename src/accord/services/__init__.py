"""The use cases behind every API: resources (apply/CRUD/watch), audit verification, task logs.

Services raise only AccordError subclasses; the API edge renders them (DESIGN.md section 7).
"""

from accord.services.audit import AuditService
from accord.services.container import Services
from accord.services.logs import LogService
from accord.services.resources import ApplyResult, ResourceService, Validator

__all__ = [
    "ApplyResult",
    "AuditService",
    "LogService",
    "ResourceService",
    "Services",
    "Validator",
]
