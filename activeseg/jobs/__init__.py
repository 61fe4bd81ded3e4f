"""Plain job functions (score the pool, build the queue, retrain, ...).

Each takes a :class:`~activeseg.jobs.runner.JobContext` and keyword parameters, re-reads all
state from the database, and is idempotent: a redelivered job finds its own earlier writes and
finishes them instead of duplicating them. Celery task shells in ``activeseg.worker`` call
these; tests call them directly without a broker.
"""
