"""drkit: disaster recovery and backup for a single-node K3s GitOps platform."""

__version__ = "0.1.0"
