"""What a running Gatehouse process needs that is not domain code: where it listens by default
(`ports`), its Prometheus HTTP server (`metrics_server`) and how it tells a supervisor it is ready
(`readiness`).

Why a package of its own inside `gatehouse`, rather than in the launcher (`gatehouse.cli`): the
components (broker_plugin, sidecar, coap_bridge) call these while they run, and a component may
import neither another component nor the launcher. Why not a new top-level package: it is three
small modules that depend on the standard library and prometheus_client only; they import no
component, no launcher and no domain module, so the domain's rule (it never imports a component
nor the launcher) holds for them as it stands, and nothing in the domain imports them.
"""
