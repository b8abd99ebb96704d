"""Errors a service client can see, each naming what went wrong and what to do."""

from __future__ import annotations


class ServiceError(RuntimeError):
    """The service answered with an error, or could not be reached or started."""


class ServiceUnavailable(ServiceError):
    """No service is listening and none could be started (see the log file named in the message)."""


class ServiceBusy(ServiceError):
    """The service's queue stayed full for the whole wait (backpressure): retry later or add replicas."""


class ProtocolError(ServiceError):
    """A frame broke the wire format (bad magic, version, type, length or payload)."""


class UntrustedService(ServiceError):
    """The process listening on the socket runs as another user than this one (checked with
    ``SO_PEERCRED``): it would receive every text and could return anything. Pass its uid in
    ``trust_uids`` (or ``HIVEMEM_TRUST_UIDS``) to allow it on purpose."""
