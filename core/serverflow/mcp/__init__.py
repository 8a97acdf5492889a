"""The MCP endpoint (`/mcp`): tools and resources for AI assistants, over streamable HTTP.

- `endpoint.py`: mounted into the Quart app; bearer-token authentication; lifecycle.
  `caller.py` holds the authenticated token for the request.
- `server.py`: the SDK server; rate limit, audit and stable error codes for every call.
- `tools.py`, `resources.py`: what an assistant sees; `reads.py` answers the questions.

The changes the tools propose are `serverflow.operations`, kept as plans by
`serverflow.plans`; this package is a surface on top of both.
"""
