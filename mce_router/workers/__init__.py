"""Data-plane worker processes (``listen.workers``): :class:`~.pool.WorkerPool` in the router
process, :mod:`.worker` in each worker, :mod:`.protocol` between them."""
