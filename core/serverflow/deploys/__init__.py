"""Deploys on the control plane: desired state per server, deployments, logs, webhooks."""
