import pluggy

hookimpl = pluggy.HookimplMarker("serverflow")


@hookimpl
def register_spaceships(register):
    register("enterprise")
