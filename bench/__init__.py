"""Benchmark suite for DocBatch: starts the service on PostgreSQL and drives it with wrk."""
