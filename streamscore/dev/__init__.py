"""Local development services (Kafka, Redis) started by the project itself."""

from streamscore.dev.services import Services, ensure_services, services_down, services_status

__all__ = ["Services", "ensure_services", "services_down", "services_status"]
