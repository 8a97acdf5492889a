"""The contract between the control plane, the agent and plugins: what crosses a boundary.

The wire protocol and its canonical encoding (`protocol`), JSON Schema validation
(`schema`), desired-state documents (`desired`), naming rules (`naming`), the action spec
(`actions`), the plugin interfaces each side implements (`interfaces` on the control plane,
`runtime` on the agent), the plugin host both sides load plugins with (`pluginhost`) and
the TLS pin format (`tlspin`). It imports neither `serverflow` nor `serverflow_agent`.
"""
