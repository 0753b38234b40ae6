"""Developer-only tooling: local emulation of the deployment and the stand-in servers tests and
benchmarks use. Not part of the deployed function archive."""
