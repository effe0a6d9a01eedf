"""The fault-injection suite (`pytest -m faults tests/faults`, also run by `edgefn bench`):
the whole fleet under load while Redis, Postgres, the push / Realtime providers or a
worker process fail, each with its expected outcome asserted."""
