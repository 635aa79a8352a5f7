"""The data plane: HAProxy sidecars and gateways, configured from the control plane's registry.

Pure parts (`haproxy_config`, `tables`) turn a registry snapshot (`ballast.wire.registry`) into
rendered configuration and runtime-API commands; `runtime` and `haproxy` are the
thin adapters to a real HAProxy. Nothing here knows the control plane's store.
"""
