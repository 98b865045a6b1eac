"""The Django site that benchmarks/frameworks.py serves with gunicorn, once per variant: one
app (two models, one view), its settings read from the environment (the variant's database
entry, as JSON, in ``FRAMEWORKS_BENCH_DATABASE``)."""
