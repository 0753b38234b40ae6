"""Conveyor-belt segmentation: a GCS image in, crops, an overview and BigQuery rows out.

The package is the deployed function's code: `main.py` turns a CloudEvent into an
`ObjectRef` and hands it to `segmentation.pipeline.process`.
"""

PIPELINE_VERSION = "0.1.0"
