//! Whether a Cluster's spec is one berth can act on. A Cluster with a problem stops berth from acting for it (no
//! launch, no scale-down) rather than being read with the bad field dropped: an unreadable `limits.maxCpu` taken as
//! "no limit" would let berth grow a cluster its owner meant to cap.

use crate::api::cluster::ClusterSpec;
use crate::model::quantity::{parse_cpu_millis, parse_units};
use base64::Engine;

/// Every problem with `spec`, each naming its field; empty when berth can act on it.
pub fn problems(spec: &ClusterSpec) -> Vec<String> {
    let mut out = Vec::new();
    if spec.cluster_name.trim().is_empty() {
        out.push("spec.clusterName is empty".to_string());
    }
    if !spec.api_server_endpoint.starts_with("https://")
        || spec.api_server_endpoint.len() <= "https://".len()
    {
        out.push(format!(
            "spec.apiServerEndpoint {:?} is not an https:// URL",
            spec.api_server_endpoint
        ));
    }
    if let Err(e) =
        base64::engine::general_purpose::STANDARD.decode(spec.certificate_authority.trim())
    {
        out.push(format!("spec.certificateAuthority is not base64: {e}"));
    }
    if let Some(cidr) = &spec.service_cidr {
        if let Err(why) = check_cidr(cidr) {
            out.push(format!("spec.serviceCidr {cidr:?}: {why}"));
        }
    }
    if let Some(q) = &spec.limits.max_cpu {
        if let Err(e) = parse_cpu_millis(q) {
            out.push(format!("spec.limits.maxCpu {q:?}: {e}"));
        }
    }
    if let Some(q) = &spec.limits.max_memory {
        if let Err(e) = parse_units(q) {
            out.push(format!("spec.limits.maxMemory {q:?}: {e}"));
        }
    }
    if let Err(e) = crate::state::disruption::policy_from_api(&spec.scale_down) {
        out.push(format!("spec.scaleDown: {e}"));
    }
    if let Some(h) = &spec.headroom {
        if h.percent >= 100 {
            out.push(format!(
                "spec.headroom.percent {} must be below 100",
                h.percent
            ));
        }
    }
    out
}

/// An IPv4 or IPv6 CIDR such as 10.100.0.0/16.
fn check_cidr(text: &str) -> Result<(), String> {
    let (address, bits) = text.split_once('/').ok_or("no /prefix length")?;
    let address: std::net::IpAddr = address
        .parse()
        .map_err(|_| format!("{address:?} is not an IP address"))?;
    let bits: u8 = bits
        .parse()
        .map_err(|_| format!("{bits:?} is not a prefix length"))?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    if bits > max {
        return Err(format!("prefix length {bits} exceeds {max}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(extra: serde_json::Value) -> ClusterSpec {
        let mut base = json!({"clusterName": "prod", "apiServerEndpoint": "https://api.example", "certificateAuthority": "Q0E=",
                              "serviceCidr": "10.100.0.0/16"});
        for (k, v) in extra.as_object().unwrap() {
            base[k] = v.clone();
        }
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn a_complete_spec_has_no_problem() {
        assert_eq!(problems(&spec(json!({}))), Vec::<String>::new());
    }

    #[test]
    fn each_problem_names_its_field() {
        let cases = [
            (
                json!({"apiServerEndpoint": "http://api.example"}),
                "spec.apiServerEndpoint",
            ),
            (
                json!({"certificateAuthority": "not base64!"}),
                "spec.certificateAuthority",
            ),
            (json!({"serviceCidr": "10.100.0.0/40"}), "spec.serviceCidr"),
            (json!({"serviceCidr": "10.100.0.0"}), "spec.serviceCidr"),
            (json!({"limits": {"maxCpu": "lots"}}), "spec.limits.maxCpu"),
            (
                json!({"limits": {"maxMemory": "4Tb"}}),
                "spec.limits.maxMemory",
            ),
            (
                json!({"scaleDown": {"unneededTime": "soon"}}),
                "spec.scaleDown",
            ),
            (
                json!({"headroom": {"percent": 100}}),
                "spec.headroom.percent",
            ),
        ];
        for (extra, field) in cases {
            let found = problems(&spec(extra.clone()));
            assert_eq!(found.len(), 1, "{extra}: {found:?}");
            assert!(found[0].starts_with(field), "{extra}: {found:?}");
        }
    }
}
