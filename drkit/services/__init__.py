"""Orchestration of backup, restore, verify, forget/prune and drills over repository and sources."""
