"""The SageMaker control plane's resources, without HTTP: the state file (store), models and
endpoint configs (catalog), the records Describe and List show (resources), the endpoint
statuses and their moves (status), List paging (listing) and parameter validation. Endpoints
live in :mod:`mce_router.endpoints`; the HTTP adapter in :mod:`mce_router.admin`."""
