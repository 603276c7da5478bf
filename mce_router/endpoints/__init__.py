"""Endpoints: their state and statuses (state), the calls that create, update and delete them
(manager), what start() brings back (recovery), the fleet of containers behind one endpoint
config (deployment) and the ping health checks (health)."""
