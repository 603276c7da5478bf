"""The SageMaker control plane's resources: persistence (store), models and endpoint configs
(catalog), the records Describe/List show (resources), the endpoint statuses (status), listing
and validation. Endpoints themselves are :mod:`mce_router.endpoints`'; the HTTP adapter is
:mod:`mce_router.admin`'s."""
