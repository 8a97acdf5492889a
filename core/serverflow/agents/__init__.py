"""The control plane's side of the agent channel: registration, handshake, commands."""
