"""The MCP endpoint (`/mcp`): tools and resources for AI assistants, over streamable HTTP.

- `endpoint.py`: mounted into the Quart app; bearer-token authentication; lifecycle.
  `caller.py` holds the authenticated token for the request.
- `server.py`: the SDK server; rate limit, audit and stable error codes for every call.
- `tools.py`, `resources.py`: what an assistant sees; `reads.py` answers the questions.
- `operation.py`: what a plannable change is (a dry run that proposes, an execution that
  does it); `operations.py` lists them: `deploys.py` (deploy, rollback, restart),
  `apps.py` (create, update, delete), `actions.py` (registry actions), `servers.py`
  (delete), with `documents.py` previewing desired-state documents.
  `serverflow.plans` keeps the plans' lifecycle.
"""
