"""The control plane's side of the agent channel: the hub (handshake, commands, presence),
the action registry, install tokens and agent wheels. `serverflow.agent_endpoint` serves
them over HTTP and WebSocket."""
