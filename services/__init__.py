"""tickflow's runtime and public API: define workflows, host them, and talk to them."""

from services.client import Client
from services.config import Settings
from services.errors import NonRetryableError, ResumeRejected, RunNotFound, TickflowError, UnknownWorkflow
from services.runtime import Node, serve
from services.workflow import Flow, Registry, StepContext, Workflow, current_step

__all__ = [
    "Client",
    "Flow",
    "Node",
    "NonRetryableError",
    "Registry",
    "ResumeRejected",
    "RunNotFound",
    "Settings",
    "StepContext",
    "TickflowError",
    "UnknownWorkflow",
    "Workflow",
    "current_step",
    "serve",
]
