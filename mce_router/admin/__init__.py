"""The admin listener: the aiohttp app (app) and the SageMaker JSON 1.1 control plane it serves
at ``POST /`` (control_api)."""
