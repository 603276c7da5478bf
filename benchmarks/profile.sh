#!/usr/bin/env bash
# Flame graphs of the router under load (py-spy), without the rest of the benchmark:
#   bash benchmarks/profile.sh                       # Direct, 1 MiB echo and auth-on paths
#   bash benchmarks/profile.sh --profile-path direct --profile-seconds 20
# Writes benchmarks/results/router-flame.svg (Direct, 97-byte JSON, 64 connections),
# router-flame-1mib.svg (1 MiB bodies), router-flame-auth.svg (SigV4 on, when the router has
# it), *.collapsed.txt (py-spy --native raw stacks) and
# router-profile.md (hot spots). Installs nginx/wrk (apt-get) and py-spy (pip) if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python benchmarks/run.py --profile-only "$@"
