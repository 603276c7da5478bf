"""The SageMaker control plane: persistence (store), the JSON 1.1 adapter (api), listing and
validation helpers. The resource methods themselves live on :class:`mce_router.router.Router`."""
