import pluggy
from quart import Blueprint

hookimpl = pluggy.HookimplMarker("serverflow")

bp = Blueprint("api", __name__)  # the core's own API blueprint is named "api"


@hookimpl
def register_blueprints(register):
    register(bp)
