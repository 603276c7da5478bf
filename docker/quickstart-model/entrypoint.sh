#!/bin/sh
# SageMaker starts a model image as `<image entrypoint> serve`; other arguments pass through.
if [ "${1:-}" = serve ]; then shift; fi
exec /opt/venv/bin/python /opt/program/container.py "$@"
