//! The interruption queue on SQS: long polling (20 s), up to ten messages at once, deletes in one batch call.
//!
//! Not paced by the EC2 token buckets: SQS's limits are per queue and far above one receive every 20 s.

use crate::cloud::queue::{InterruptionQueue, QueueError, QueueMessage, MAX_MESSAGES};
use async_trait::async_trait;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// SQS's longest wait: one receive call a queue costs every 20 s when it is quiet.
const LONG_POLL_SECONDS: i32 = 20;

pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsQueue {
    /// Opens a queue by URL, or by name through GetQueueUrl (which also tells a missing or denied queue at once).
    pub async fn open(client: aws_sdk_sqs::Client, queue: &str) -> Result<SqsQueue, QueueError> {
        let url = if queue.starts_with("https://") || queue.starts_with("http://") {
            queue.to_string()
        } else {
            client
                .get_queue_url()
                .queue_name(queue)
                .send()
                .await
                .map_err(|e| classify(queue, e))?
                .queue_url
                .ok_or_else(|| QueueError::Missing {
                    queue: queue.into(),
                })?
        };
        // A URL is checked too: a queue that does not exist or is denied says so now, not at every receive.
        client
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| classify(&url, e))?;
        Ok(SqsQueue { client, url })
    }
}

/// The SQS error codes that mean "no such queue" and "not allowed" (both the query and the JSON protocol's).
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    queue: &str,
    e: SdkError<E, R>,
) -> QueueError {
    let code = e.code().unwrap_or_default().to_string();
    let message = e
        .message()
        .map(str::to_string)
        .unwrap_or_else(|| DisplayErrorContext(&e).to_string());
    match code.as_str() {
        "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" | "NonExistentQueue" => {
            QueueError::Missing {
                queue: queue.into(),
            }
        }
        "AccessDenied"
        | "AccessDeniedException"
        | "KMS.AccessDeniedException"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException" => QueueError::Denied {
            queue: queue.into(),
            message,
        },
        _ => QueueError::Transient {
            queue: queue.into(),
            message: if code.is_empty() {
                message
            } else {
                format!("{code}: {message}")
            },
        },
    }
}

#[async_trait]
impl InterruptionQueue for SqsQueue {
    fn name(&self) -> &str {
        &self.url
    }

    async fn receive(&self) -> Result<Vec<QueueMessage>, QueueError> {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(MAX_MESSAGES as i32)
            .wait_time_seconds(LONG_POLL_SECONDS)
            .send()
            .await
            .map_err(|e| classify(&self.url, e))?;
        Ok(out
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|m| {
                Some(QueueMessage {
                    receipt: m.receipt_handle?,
                    body: m.body.unwrap_or_default(),
                })
            })
            .collect())
    }

    async fn delete(&self, receipts: &[String]) -> Result<(), QueueError> {
        for chunk in receipts.chunks(MAX_MESSAGES) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(r)
                        .build()
                        .map_err(|e| QueueError::Transient {
                            queue: self.url.clone(),
                            message: e.to_string(),
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .delete_message_batch()
                .queue_url(&self.url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| classify(&self.url, e))?;
            // A failed entry comes back after the visibility timeout and is acted on again: every action is
            // idempotent, so this costs a second look, not a second action.
            for f in out.failed {
                tracing::warn!(queue = %self.url, code = %f.code, message = ?f.message, "an interruption message was not deleted");
            }
        }
        Ok(())
    }
}
