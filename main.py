"""Cloud Function (2nd gen) entry point: `google.cloud.storage.object.v1.finalized` -> pipeline.

Deploy with `--entry-point on_object_finalized` (Terraform does); run locally with
`functions-framework --target on_object_finalized --signature-type cloudevent`.
"""

import functions_framework
from cloudevents.http import CloudEvent
from werkzeug.exceptions import InternalServerError

from segmentation.errors import TransientError
from segmentation.function import handle_cloud_event


@functions_framework.cloud_event
def on_object_finalized(cloud_event: CloudEvent) -> None:
    """Process the image the event names; answer HTTP 500 only when the platform should redeliver it.

    The failure is already logged as one JSON line; an HTTP error (not a raised exception) keeps
    the web framework from printing a plain-text traceback beside it."""
    try:
        handle_cloud_event(cloud_event.get_attributes(), cloud_event.get_data())
    except TransientError as exc:
        raise InternalServerError(f"{exc.error_type}: the event will be redelivered") from None
