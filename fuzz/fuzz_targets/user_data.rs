//! Bootstrap user data (`src/cloud/bootstrap.rs`) from a class's own user data or template. The first byte picks
//! the format (AL2023 nodeadm, Bottlerocket TOML, a custom template), the rest is the class's text. Rendering
//! either fails with an error or yields user data EC2 accepts; for AL2023 that is a MIME multipart document whose
//! last part is berth's NodeConfig naming this cluster (nodeadm lets the last part win).
#![no_main]

use berth::cloud::bootstrap::{parse_multipart, Bootstrap, BootstrapFormat, MAX_USER_DATA_BYTES};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

const CLUSTER: &str = "fuzz-cluster";

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    // The class's own user data, as read from a MIME document, must never panic whatever it holds.
    let _ = parse_multipart(text);
    let format = match selector % 3 {
        0 => BootstrapFormat::Al2023,
        1 => BootstrapFormat::Bottlerocket,
        _ => BootstrapFormat::Custom {
            template: text.to_string(),
        },
    };
    let is_al2023 = format == BootstrapFormat::Al2023;
    let bootstrap = Bootstrap {
        format,
        cluster_name: CLUSTER.into(),
        api_server_endpoint: "https://ABCDEF.gr7.us-east-1.eks.amazonaws.com".into(),
        certificate_authority: "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==".into(),
        cluster_cidr: "10.100.0.0/16".into(),
        labels: BTreeMap::from([("berth.dev/machine".to_string(), "m-1".to_string())]),
        taints: Vec::new(),
        class_user_data: Some(text.to_string()),
    };
    let Ok(out) = bootstrap.render() else {
        return;
    };
    assert!(
        out.len() <= MAX_USER_DATA_BYTES,
        "{} bytes of user data rendered",
        out.len()
    );
    if is_al2023 {
        let parts = parse_multipart(&out).unwrap_or_else(|e| {
            panic!("rendered AL2023 user data is not a MIME document ({e}):\n{out}")
        });
        let last = parts.last().expect("a rendered MIME document has parts");
        assert_eq!(
            last.content_type, "application/node.eks.aws",
            "the last part is not a NodeConfig:\n{out}"
        );
        assert!(
            last.body.contains(CLUSTER),
            "the last part is not berth's NodeConfig for the cluster:\n{out}"
        );
    }
});
