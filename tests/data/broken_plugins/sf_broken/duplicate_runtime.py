import pluggy

from serverflow_runtime_pm2.control import Pm2Runtime

hookimpl = pluggy.HookimplMarker("serverflow")


@hookimpl
def register_runtimes(register):
    register(Pm2Runtime())  # "pm2" is already registered by runtime_pm2
