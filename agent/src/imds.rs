//! Instance metadata over IMDSv2, through `aws_config::imds` (token flow,
//! refresh on 401, endpoint from `AWS_EC2_METADATA_SERVICE_ENDPOINT`).
//! A 404 means "not set" and comes back as `None`, never as an error.

use aws_config::imds::client::error::ImdsError;
use aws_config::imds::Client;
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub const TAG_INITIAL_RUN_ID: &str = "InitialRunId";
/// Also the IAM policy's condition key, so it is defined with the AWS calls.
pub use runner_agent_common::permissions::TAG_ALLOW_SELF_TERMINATION;

/// IMDS answers in well under a millisecond on a real instance; these bound
/// a hung endpoint. The client retries (3 attempts, exponential back-off
/// from the SDK's standard retry strategy) within `OPERATION_TIMEOUT`.
/// The client's own read timeout (1 s by default) is raised to the attempt
/// timeout: otherwise an IMDS answering in over a second (a loaded host,
/// throttling) fails every call, and the agent could never boot.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("instance metadata {path}: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: Box<ImdsError>,
    },
    #[error("instance metadata {path}: not set (404)")]
    Missing { path: String },
}

#[derive(Clone, Debug)]
pub struct Imds {
    client: Arc<RwLock<Client>>,
}

/// Where the instance's tags can be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TagSource {
    /// Instance-metadata tags are on; these are the tag keys.
    Metadata(Vec<String>),
    /// Instance-metadata tags are off (the listing is 404): ask EC2.
    Ec2Api,
}

impl Imds {
    /// A client for the standard endpoint, or the one named by
    /// `AWS_EC2_METADATA_SERVICE_ENDPOINT` (tests use a loopback fake).
    pub fn from_env() -> Imds {
        Imds {
            client: Arc::new(RwLock::new(Self::new_client())),
        }
    }

    fn new_client() -> Client {
        Client::builder()
            .max_attempts(3)
            .operation_attempt_timeout(ATTEMPT_TIMEOUT)
            .read_timeout(ATTEMPT_TIMEOUT)
            .operation_timeout(OPERATION_TIMEOUT)
            .build()
    }

    /// GETs `/latest/<path>`; 404 is `Ok(None)`.
    pub async fn get(&self, path: &str) -> Result<Option<String>, MetadataError> {
        let full = format!("/latest/{path}");
        let status = |e: &ImdsError| match e {
            ImdsError::ErrorResponse(r) => r.response().status().as_u16(),
            _ => 0,
        };
        let mut refreshed = false;
        loop {
            let client = self.client.read().expect("not poisoned").clone();
            match client.get(full.clone()).await {
                Ok(value) => return Ok(Some(value.as_ref().to_owned())),
                Err(e) if status(&e) == 404 => return Ok(None),
                // The SDK drops a cached token only when its TTL runs out; a
                // token IMDS stopped honouring earlier (after a stop/start,
                // say) would keep failing. A fresh client fetches a new one.
                Err(e) if status(&e) == 401 && !refreshed => {
                    tracing::info!(path = %full, "IMDS refused the session token; fetching a new one");
                    *self.client.write().expect("not poisoned") = Self::new_client();
                    refreshed = true;
                }
                Err(source) => {
                    return Err(MetadataError::Unreadable {
                        path: full,
                        source: Box::new(source),
                    })
                }
            }
        }
    }

    async fn get_required(&self, path: &str) -> Result<String, MetadataError> {
        self.get(path).await?.ok_or_else(|| MetadataError::Missing {
            path: format!("/latest/{path}"),
        })
    }

    pub async fn instance_id(&self) -> Result<String, MetadataError> {
        self.get_required("meta-data/instance-id")
            .await
            .map(|s| s.trim().to_owned())
    }

    pub async fn region(&self) -> Result<String, MetadataError> {
        self.get_required("meta-data/placement/region")
            .await
            .map(|s| s.trim().to_owned())
    }

    pub async fn tag_source(&self) -> Result<TagSource, MetadataError> {
        Ok(match self.get("meta-data/tags/instance").await? {
            Some(list) => TagSource::Metadata(
                list.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
            ),
            None => TagSource::Ec2Api,
        })
    }

    /// One instance tag from metadata; `None` when the instance lacks it.
    pub async fn tag(&self, key: &str) -> Result<Option<String>, MetadataError> {
        self.get(&format!("meta-data/tags/instance/{key}")).await
    }

    /// The pending spot interruption notice (its JSON), if any.
    pub async fn spot_instance_action(&self) -> Result<Option<String>, MetadataError> {
        self.get("meta-data/spot/instance-action").await
    }

    /// The rebalance recommendation (its JSON), if EC2 has made one.
    pub async fn rebalance_recommendation(&self) -> Result<Option<String>, MetadataError> {
        self.get("meta-data/events/recommendations/rebalance").await
    }
}
