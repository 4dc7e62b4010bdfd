"""Chain commands: functions, validate, render, deploy, ls, status, stats, undeploy."""
from __future__ import annotations

from . import cli  # noqa: F401
