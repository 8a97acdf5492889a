import pluggy

hookimpl = pluggy.HookimplMarker("serverflow")


class NotARuntime:
    name = "half-runtime"
    description = "has no start/stop"


@hookimpl
def register_runtimes(register):
    register(NotARuntime())
