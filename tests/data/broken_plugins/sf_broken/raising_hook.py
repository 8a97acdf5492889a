import pluggy

hookimpl = pluggy.HookimplMarker("serverflow")


@hookimpl
def register_runtimes(register):
    raise RuntimeError("boom while registering")
