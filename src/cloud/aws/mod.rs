//! The EC2 and Auto Scaling provider, through aws-sdk-ec2 and aws-sdk-autoscaling with the default credential chain
//! (environment, profile, IRSA, Pod Identity, instance profile).
//!
//! Every call goes through one [`ApiCaller`]: EC2-sized client-side token buckets, berth's own retries with jittered
//! backoff (the SDK's retries are off, so each attempt is paced and counted), and metrics. The region and the
//! endpoint are configurable so tests point the provider at moto or at a fault-injecting proxy in front of it.
//!
//! The HTTP client is built here (rustls with ring) because the crate is compiled without the SDK's default client.

mod asg;
mod catalog;
mod ec2;
mod sqs;

use crate::cloud::clock::SharedClock;
use crate::cloud::error::CloudError;
use crate::cloud::launch_plan::{plan_launch, SubnetInfo};
use crate::cloud::launcher::{self, LaunchTemplateSpec};
use crate::cloud::metrics::CloudMetrics;
use crate::cloud::rate_limit::RateLimits;
use crate::cloud::retry::{is_throttle_code, ApiCaller, Backoff, Failure};
use crate::cloud::unavailable::{is_capacity_error, UnavailableOfferings, DEFAULT_TTL};
use crate::cloud::{
    ClassRevision, CloudProvider, Instance, InstanceLookup, LaunchOutcome, LaunchRequest,
    NodeGroup, TerminateOutcome,
};
use crate::model::instance_type::Catalog;
use async_trait::async_trait;
use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use catalog::on_demand_prices;

/// How to reach AWS.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    /// This cluster's name, the value of the `berth.dev/cluster` tag.
    pub cluster_name: String,
    /// None = the default chain (AWS_REGION, profile, IMDS).
    pub region: Option<String>,
    /// A custom endpoint for both services (moto, a proxy); None = AWS.
    pub endpoint_url: Option<String>,
    /// How often the instance types, offerings and spot prices are read again.
    pub catalog_refresh: Duration,
    /// How long subnets, security groups and AMIs resolved from a selector are reused.
    pub resolve_ttl: Duration,
    pub unavailable_ttl: chrono::Duration,
    pub backoff: Backoff,
    /// Per-call timeout.
    pub call_timeout: Duration,
    /// The share (0 < share <= 1) of EC2's documented API buckets berth allows itself, so tools sharing the
    /// account's budget are not throttled by berth's bursts.
    pub rate_limit_share: f64,
}

impl AwsConfig {
    pub fn new(cluster_name: &str) -> AwsConfig {
        AwsConfig {
            cluster_name: cluster_name.into(),
            region: None,
            endpoint_url: None,
            catalog_refresh: Duration::from_secs(600),
            resolve_ttl: Duration::from_secs(60),
            unavailable_ttl: DEFAULT_TTL,
            backoff: Backoff::default(),
            call_timeout: Duration::from_secs(30),
            rate_limit_share: 1.0,
        }
    }
}

/// A value reused for a while.
struct Cached<V> {
    at: tokio::time::Instant,
    value: V,
}

pub struct AwsCloud {
    ec2: aws_sdk_ec2::Client,
    asg: aws_sdk_autoscaling::Client,
    sqs: aws_sdk_sqs::Client,
    region: String,
    config: AwsConfig,
    caller: ApiCaller,
    clock: SharedClock,
    unavailable: UnavailableOfferings,
    catalog: tokio::sync::Mutex<Option<Cached<Arc<Catalog>>>>,
    /// Launch templates known to exist (created or found by this process).
    launch_templates: Mutex<HashSet<String>>,
    subnets: Mutex<HashMap<String, Cached<Vec<SubnetInfo>>>>,
    security_groups: Mutex<HashMap<String, Cached<Vec<String>>>>,
    images: Mutex<HashMap<String, Cached<String>>>,
}

impl AwsCloud {
    /// Loads the SDK configuration and checks that credentials resolve, so a missing or broken credential chain is
    /// one clear error at start rather than a failure on every call.
    pub async fn connect(
        config: AwsConfig,
        clock: SharedClock,
        metrics: CloudMetrics,
    ) -> Result<AwsCloud, CloudError> {
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .http_client(http_client)
            // berth retries itself (paced and counted); the SDK must not multiply the attempts.
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(config.call_timeout)
                    .build(),
            );
        if let Some(r) = &config.region {
            loader = loader.region(aws_config::Region::new(r.clone()));
        }
        if let Some(e) = &config.endpoint_url {
            loader = loader.endpoint_url(e.clone());
        }
        let sdk = loader.load().await;
        let region = sdk.region().map(|r| r.to_string()).ok_or_else(|| {
            CloudError::invalid("no AWS region: set --region, AWS_REGION or a profile's region")
        })?;
        let provider = sdk
            .credentials_provider()
            .ok_or_else(|| CloudError::Credentials {
                message: "no credentials provider is configured".into(),
            })?;
        use aws_sdk_ec2::config::ProvideCredentials;
        provider.provide_credentials().await.map_err(|e| CloudError::Credentials {
            message: format!(
                "no usable AWS credentials from the default chain (environment, profile, web identity, container, instance metadata): {}",
                DisplayErrorContext(&e)
            ),
        })?;
        let ec2 = aws_sdk_ec2::Client::new(&sdk);
        let asg = aws_sdk_autoscaling::Client::new(&sdk);
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let caller = ApiCaller::new(
            RateLimits::ec2_share(metrics.clone(), config.rate_limit_share),
            metrics,
            config.backoff,
            clock.now().timestamp_nanos_opt().unwrap_or_default() as u64,
        );
        let unavailable = UnavailableOfferings::new(clock.clone(), config.unavailable_ttl);
        Ok(AwsCloud {
            ec2,
            asg,
            sqs,
            region,
            config,
            caller,
            clock,
            unavailable,
            catalog: tokio::sync::Mutex::new(None),
            launch_templates: Mutex::new(HashSet::new()),
            subnets: Mutex::new(HashMap::new()),
            security_groups: Mutex::new(HashMap::new()),
            images: Mutex::new(HashMap::new()),
        })
    }

    pub fn region(&self) -> &str {
        &self.region
    }

    pub fn metrics(&self) -> &CloudMetrics {
        &self.caller.metrics
    }

    /// The EC2 client (tests use it to set up fixtures the provider only reads).
    pub fn ec2_client(&self) -> &aws_sdk_ec2::Client {
        &self.ec2
    }

    pub fn autoscaling_client(&self) -> &aws_sdk_autoscaling::Client {
        &self.asg
    }
}

fn cache_get<V: Clone>(
    map: &Mutex<HashMap<String, Cached<V>>>,
    key: &str,
    ttl: Duration,
) -> Option<V> {
    let m = map.lock().unwrap_or_else(|p| p.into_inner());
    m.get(key)
        .filter(|c| c.at.elapsed() < ttl)
        .map(|c| c.value.clone())
}

fn cache_put<V>(map: &Mutex<HashMap<String, Cached<V>>>, key: String, value: V) {
    map.lock().unwrap_or_else(|p| p.into_inner()).insert(
        key,
        Cached {
            at: tokio::time::Instant::now(),
            value,
        },
    );
}

/// Classifies an SDK error for the retry loop.
pub(crate) fn classify<E>(err: SdkError<E>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &err {
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = err.code().unwrap_or("Unknown").to_string();
            let message = err.message().unwrap_or("").to_string();
            if is_throttle_code(&code) || status == 429 {
                Failure::Throttled { code, message }
            } else if is_capacity_error(&code) {
                // EC2 sends InsufficientInstanceCapacity with a 5xx status; it is an answer, not an outage.
                Failure::Client {
                    status,
                    code,
                    message,
                }
            } else if status >= 500 {
                Failure::Server {
                    status,
                    code,
                    message,
                }
            } else {
                Failure::Client {
                    status,
                    code,
                    message,
                }
            }
        }
        SdkError::ConstructionFailure(_) => {
            let text = DisplayErrorContext(&err).to_string();
            if text.to_ascii_lowercase().contains("credential") {
                Failure::Credentials { message: text }
            } else {
                Failure::Client {
                    status: 0,
                    code: "ConstructionFailure".into(),
                    message: text,
                }
            }
        }
        _ => {
            let text = DisplayErrorContext(&err).to_string();
            if text.to_ascii_lowercase().contains("credential") {
                Failure::Credentials { message: text }
            } else {
                Failure::Transport { message: text }
            }
        }
    }
}

#[async_trait]
impl CloudProvider for AwsCloud {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn region(&self) -> &str {
        &self.region
    }

    async fn launch(&self, request: &LaunchRequest) -> Result<LaunchOutcome, CloudError> {
        if request.cluster_name != self.config.cluster_name {
            return Err(CloudError::invalid(format!(
                "launch request for cluster {} sent to the provider of cluster {}",
                request.cluster_name, self.config.cluster_name
            )));
        }
        let subnets = self.resolve_subnets(&request.subnets).await?;
        let security_groups = self
            .resolve_security_groups(&request.security_groups)
            .await?;
        let catalog = self.instance_types().await?;
        let plan = plan_launch(request, &catalog, &subnets, |k| {
            self.unavailable.is_unavailable(k)
        })?;
        let image_id = self.resolve_image(&request.image, plan.arch).await?;
        let user_data = request
            .bootstrap
            .render()
            .map_err(crate::cloud::sim::bootstrap_error)?;
        let spec = LaunchTemplateSpec::new(request, image_id, security_groups, user_data);
        let name = self.ensure_launch_template(&spec).await?;
        let mut outcome =
            launcher::execute(self, request, &plan, &name, &self.unavailable, &self.region).await?;
        if outcome.instance.subnet_id.is_none() {
            outcome.instance.subnet_id = subnets
                .iter()
                .find(|s| s.zone == outcome.instance.zone)
                .map(|s| s.id.clone());
        }
        Ok(outcome)
    }

    async fn terminate(&self, instance_ids: &[String]) -> Result<TerminateOutcome, CloudError> {
        self.terminate_owned(instance_ids).await
    }

    async fn describe_instances(&self) -> Result<Vec<Instance>, CloudError> {
        self.describe_cluster_instances(Vec::new()).await
    }

    async fn lookup_instances(
        &self,
        instance_ids: &[String],
    ) -> Result<std::collections::BTreeMap<String, InstanceLookup>, CloudError> {
        self.lookup_by_id(instance_ids).await
    }

    async fn instance_types(&self) -> Result<Arc<Catalog>, CloudError> {
        let mut guard = self.catalog.lock().await;
        let fresh = guard
            .as_ref()
            .is_some_and(|c| c.at.elapsed() < self.config.catalog_refresh);
        if !fresh {
            let catalog = self.load_catalog().await?;
            *guard = Some(Cached {
                at: tokio::time::Instant::now(),
                value: Arc::new(catalog),
            });
        }
        let mut c = guard.as_ref().map(|c| c.value.clone()).unwrap_or_default();
        drop(guard);
        self.unavailable.apply(&mut c);
        Ok(c)
    }

    fn unavailable_offerings(&self) -> &UnavailableOfferings {
        &self.unavailable
    }

    async fn node_groups(&self) -> Result<Vec<NodeGroup>, CloudError> {
        self.discover_node_groups(None).await
    }

    async fn set_node_group_desired_capacity(
        &self,
        group: &str,
        desired: u32,
    ) -> Result<(), CloudError> {
        self.set_desired(group, desired).await
    }

    async fn terminate_node_group_instance(
        &self,
        group: &str,
        instance_id: &str,
    ) -> Result<(), CloudError> {
        self.terminate_in_group(group, instance_id).await
    }

    async fn garbage_collect_launch_templates(
        &self,
        live: &[ClassRevision],
        created_before: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, CloudError> {
        self.collect_launch_templates(live, created_before).await
    }

    async fn interruption_queue(
        &self,
        queue: &str,
    ) -> Result<Arc<dyn crate::cloud::queue::InterruptionQueue>, crate::cloud::queue::QueueError>
    {
        Ok(Arc::new(
            sqs::SqsQueue::open(self.sqs.clone(), queue).await?,
        ))
    }
}
