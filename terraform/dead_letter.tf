# Poison events: a dead-letter topic for the trigger's subscription, so an event the function
# never acknowledges ends where a person sees it instead of being dropped by Pub/Sub.
#
# The function's object-finalize trigger is an Eventarc trigger whose transport is a Pub/Sub
# topic and push subscription that Eventarc creates and manages. The Eventarc API exposes that
# subscription as output only (google.cloud.eventarc.v1.Pubsub.subscription: "Output only. The
# name of the Pub/Sub subscription created and managed by Eventarc"), so neither the function's
# event_trigger nor google_eventarc_trigger can set a dead-letter policy on it
# (hashicorp/terraform-provider-google#17697). Google's documented way is to update that
# subscription through Pub/Sub (Eventarc "Retry events": all retry and retention settings are
# configured on the trigger's subscription). terraform_data.trigger_dead_letter_policy does
# that with gcloud after the trigger exists, and again whenever the trigger or the policy
# changes:
#
# - dead-letter topic: this topic, after dead_letter_max_delivery_attempts failed deliveries;
# - retention of the trigger's subscription: dead_letter_retention_days instead of Eventarc's
#   24 hours, so an event whose deliveries each run to the timeout is dead-lettered, never
#   expired before its attempts are used up;
# - the Pub/Sub service agent may acknowledge on that subscription (roles/pubsub.subscriber on
#   it), which dead-lettering needs; its publish grant on this topic is declared below.
#
# Dead-lettered events are kept dead_letter_retention_days in the pull subscription named by the
# output `dead_letter_subscription`; each message is the undelivered event (it names the
# object's bucket, name and generation). Read them with `gcloud pubsub subscriptions pull`.

locals {
  pubsub_agent_member   = "serviceAccount:service-${data.google_project.this.number}@gcp-sa-pubsub.iam.gserviceaccount.com"
  dead_letter_retention = "${var.dead_letter_retention_days * 86400}s"
}

data "google_project" "this" {
  project_id = var.project_id
}

resource "google_pubsub_topic" "dead_letter" {
  #checkov:skip=CKV_GCP_83:A customer-managed key is optional: dead_letter_kms_key_name sets kms_key_name; empty keeps Google-managed keys (the messages hold object names and generations only).
  project = var.project_id
  name    = "${local.base}-dead-letter"

  kms_key_name = var.dead_letter_kms_key_name != "" ? var.dead_letter_kms_key_name : null

  # Kept on the topic too, so nothing published before the subscription existed is lost.
  message_retention_duration = local.dead_letter_retention

  depends_on = [google_project_service.enabled, google_kms_crypto_key_iam_member.service_agents_use_keys]
}

resource "google_pubsub_subscription" "dead_letter" {
  project = var.project_id
  name    = "${local.base}-dead-letter"
  topic   = google_pubsub_topic.dead_letter.id

  message_retention_duration = local.dead_letter_retention
  ack_deadline_seconds       = 60

  # Never deleted for inactivity: nobody may read it for weeks, and that is the good case.
  expiration_policy {
    ttl = ""
  }
}

# Dead-lettering publishes as the project's Pub/Sub service agent.
resource "google_pubsub_topic_iam_member" "pubsub_agent_publishes_dead_letters" {
  project = var.project_id
  topic   = google_pubsub_topic.dead_letter.name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_agent_member
}

resource "terraform_data" "trigger_dead_letter_policy" {
  triggers_replace = [
    google_cloudfunctions2_function.segmentation.event_trigger[0].trigger,
    google_pubsub_topic.dead_letter.id,
    var.dead_letter_max_delivery_attempts,
    local.dead_letter_retention,
  ]

  provisioner "local-exec" {
    interpreter = ["/bin/bash", "-c"]
    command     = <<-EOT
      set -euo pipefail
      subscription=$(gcloud eventarc triggers describe "$TRIGGER" --format='value(transport.pubsub.subscription)')
      test -n "$subscription"
      gcloud pubsub subscriptions add-iam-policy-binding "$subscription" \
        --member="$PUBSUB_AGENT" --role=roles/pubsub.subscriber --condition=None --quiet >/dev/null
      gcloud pubsub subscriptions update "$subscription" \
        --dead-letter-topic="$DEAD_LETTER_TOPIC" --max-delivery-attempts="$MAX_DELIVERY_ATTEMPTS" \
        --message-retention-duration="$RETENTION"
    EOT
    environment = {
      TRIGGER               = google_cloudfunctions2_function.segmentation.event_trigger[0].trigger
      PUBSUB_AGENT          = local.pubsub_agent_member
      DEAD_LETTER_TOPIC     = google_pubsub_topic.dead_letter.id
      MAX_DELIVERY_ATTEMPTS = tostring(var.dead_letter_max_delivery_attempts)
      RETENTION             = local.dead_letter_retention
    }
  }

  lifecycle {
    precondition {
      # The shortest time to use up the attempts: Pub/Sub's backoff between them, 10 s doubling to 600 s.
      condition     = var.give_up_after_s < sum([for k in range(var.dead_letter_max_delivery_attempts - 1) : min(600, 10 * pow(2, k))])
      error_message = "give_up_after_s must be below the time dead_letter_max_delivery_attempts deliveries take at least (Pub/Sub's backoff, 10 s doubling to 600 s), or a still-failing image is dead-lettered before the function records its failed row."
    }
    precondition {
      # Each failed delivery takes at most the function timeout plus Pub/Sub's largest backoff.
      condition     = var.dead_letter_max_delivery_attempts * (var.function_timeout_seconds + 600) < var.dead_letter_retention_days * 86400
      error_message = "dead_letter_retention_days is too short for dead_letter_max_delivery_attempts deliveries (each up to function_timeout_seconds + 600 s): events would expire instead of being dead-lettered."
    }
  }

  depends_on = [
    google_pubsub_topic_iam_member.pubsub_agent_publishes_dead_letters,
    google_pubsub_subscription.dead_letter,
  ]
}
