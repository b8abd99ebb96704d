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
