"""Deploys on the agent: reconciling the signed desired state (docs/deploys.md)."""
