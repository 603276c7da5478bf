"""Example SageMaker-style model containers shipped with mce_router.

:mod:`mce_router.examples.container` is a small aiohttp model server with four roles
(``preprocess``, ``model``, ``postprocess``, ``echo``). Three of them form the quickstart's
Serial pipeline (CSV rows → JSON instances → scores → labels) and each also works alone behind
a Direct endpoint. Run one with ``python -m mce_router.examples.container --role model``.
"""
