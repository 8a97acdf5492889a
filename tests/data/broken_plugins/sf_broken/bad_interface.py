import pluggy

hookimpl = pluggy.HookimplMarker("serverflow")


class NotARuntime:
    name = "half-runtime"
    description = "has no restart"


@hookimpl
def register_runtimes(register):
    register(NotARuntime())
