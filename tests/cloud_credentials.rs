//! No credentials anywhere in the default chain: one clear error when the provider starts, before any call.

use berth::cloud::aws::{AwsCloud, AwsConfig};
use berth::cloud::clock::{SharedClock, SystemClock};
use berth::cloud::metrics::CloudMetrics;
use std::sync::Arc;

#[tokio::test]
async fn missing_credentials_are_one_clear_error_at_start() {
    for k in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ] {
        std::env::remove_var(k);
    }
    let dir = tempfile::tempdir().unwrap();
    std::env::set_var("AWS_CONFIG_FILE", dir.path().join("config"));
    std::env::set_var(
        "AWS_SHARED_CREDENTIALS_FILE",
        dir.path().join("credentials"),
    );
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let mut cfg = AwsConfig::new("c");
    cfg.region = Some("us-east-1".into());
    // Never reached: credentials fail first.
    cfg.endpoint_url = Some("http://127.0.0.1:9".into());
    let clock: SharedClock = Arc::new(SystemClock);
    let err = match AwsCloud::connect(cfg, clock, CloudMetrics::unregistered().unwrap()).await {
        Ok(_) => panic!("connect must fail without credentials"),
        Err(e) => e,
    };
    assert_eq!(err.category(), "credentials");
    assert!(
        err.to_string().contains("no usable AWS credentials"),
        "{err}"
    );
}
