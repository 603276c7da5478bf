"""Locust with the mce-router loadtest mix file, signed like boto3 when credentials exist.

One machine:
    locust -f examples/loadtest/locustfile.py --headless -u 50 -r 10 -t 60s \
        --host http://127.0.0.1:8080 \
        --mce-mix examples/loadtest/quickstart-mix.yaml --mce-endpoint quickstart-direct

Distributed (Locust's own master and workers, here on one host):
    locust -f examples/loadtest/locustfile.py --master --headless --expect-workers 2 \
        -u 200 -r 50 -t 120s --host http://127.0.0.1:8080 \
        --mce-mix examples/loadtest/quickstart-mix.yaml --mce-endpoint quickstart-direct
    locust -f examples/loadtest/locustfile.py --worker --master-host 127.0.0.1   # on each worker
"""

from mce_router.loadtest.locust_user import SageMakerUser


class Invoke(SageMakerUser):
    pass
