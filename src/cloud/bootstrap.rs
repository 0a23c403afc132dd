//! Bootstrap user data: what makes a new instance join this cluster as a Node with its Machine's labels and taints.
//!
//! Three formats (FACTS.md §4):
//! - EKS AL2023: a nodeadm `NodeConfig` in a MIME multipart document. The class's own user data (a MIME document,
//!   a shell script, a cloud-config or a NodeConfig) comes first and berth's NodeConfig last, because nodeadm merges
//!   parts in order and the last one wins: the cluster's identity cannot be overridden by accident.
//! - Bottlerocket: TOML settings. The class's own TOML is kept; berth sets the keys that identify the cluster and
//!   the node's labels and taints, replacing the class's value for those keys only.
//! - Custom: the class's template with `{{ClusterName}}`, `{{ClusterEndpoint}}`, `{{CABundle}}`, `{{ClusterCIDR}}`,
//!   `{{Labels}}` (`k=v,k=v`) and `{{Taints}}` (`k=v:Effect,...`) replaced.
//!
//! Pure: no I/O, everything is in [`Bootstrap`].

use crate::model::taints::Taint;
use std::collections::BTreeMap;

/// EC2 accepts at most 16 KB of user data before base64 (FACTS.md §2).
pub const MAX_USER_DATA_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootstrapFormat {
    Al2023,
    Bottlerocket,
    Custom { template: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bootstrap {
    pub format: BootstrapFormat,
    pub cluster_name: String,
    /// `https://...`
    pub api_server_endpoint: String,
    /// The cluster CA bundle, base64 (as in a kubeconfig's certificate-authority-data).
    pub certificate_authority: String,
    /// The service CIDR (nodeadm requires it to derive the cluster DNS address).
    pub cluster_cidr: String,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    /// The class's own user data, merged as the format allows.
    pub class_user_data: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootstrapError {
    #[error("bootstrap field {field} is empty")]
    MissingField { field: &'static str },
    #[error("user-data template: unknown placeholder {{{{{name}}}}} (known: ClusterName, ClusterEndpoint, CABundle, ClusterCIDR, Labels, Taints)")]
    UnknownPlaceholder { name: String },
    #[error("user-data template: unterminated placeholder at byte {offset}")]
    UnterminatedPlaceholder { offset: usize },
    #[error("the class's user data is not something nodeadm accepts: {reason}")]
    UnsupportedClassUserData { reason: String },
    #[error("the class's Bottlerocket settings are not valid TOML for berth to merge: line {line}: {reason}")]
    InvalidToml { line: usize, reason: String },
    #[error("user data is {size} bytes, EC2 accepts at most {MAX_USER_DATA_BYTES}")]
    TooLarge { size: usize },
}

impl BootstrapError {
    pub fn category(&self) -> &'static str {
        match self {
            BootstrapError::MissingField { .. } => "missing_field",
            BootstrapError::UnknownPlaceholder { .. } => "unknown_placeholder",
            BootstrapError::UnterminatedPlaceholder { .. } => "unterminated_placeholder",
            BootstrapError::UnsupportedClassUserData { .. } => "unsupported_user_data",
            BootstrapError::InvalidToml { .. } => "invalid_toml",
            BootstrapError::TooLarge { .. } => "too_large",
        }
    }
}

impl Bootstrap {
    /// The user data to launch with (raw, not base64).
    pub fn render(&self) -> Result<String, BootstrapError> {
        let out = match &self.format {
            BootstrapFormat::Al2023 => {
                self.require_cluster(true)?;
                al2023(self)?
            }
            BootstrapFormat::Bottlerocket => {
                self.require_cluster(false)?;
                bottlerocket(self)?
            }
            BootstrapFormat::Custom { template } => render_template(template, self)?,
        };
        if out.len() > MAX_USER_DATA_BYTES {
            return Err(BootstrapError::TooLarge { size: out.len() });
        }
        Ok(out)
    }

    fn require_cluster(&self, cidr: bool) -> Result<(), BootstrapError> {
        for (field, value) in [
            ("clusterName", &self.cluster_name),
            ("apiServerEndpoint", &self.api_server_endpoint),
            ("certificateAuthority", &self.certificate_authority),
        ] {
            if value.trim().is_empty() {
                return Err(BootstrapError::MissingField { field });
            }
        }
        if cidr && self.cluster_cidr.trim().is_empty() {
            return Err(BootstrapError::MissingField {
                field: "clusterCIDR",
            });
        }
        Ok(())
    }

    fn labels_flag_value(&self) -> String {
        self.labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn taints_flag_value(&self) -> String {
        self.taints
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

// ---------------------------------------------------------------------------------------------------------------
// AL2023 nodeadm

const NODECONFIG_CONTENT_TYPE: &str = "application/node.eks.aws";

/// One part of a MIME multipart document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimePart {
    pub content_type: String,
    pub body: String,
}

fn node_config(b: &Bootstrap) -> String {
    let mut kubelet = serde_json::Map::new();
    if !b.taints.is_empty() {
        let taints: Vec<serde_json::Value> = b
            .taints
            .iter()
            .map(|t| serde_json::json!({"key": t.key, "value": t.value, "effect": t.effect.to_string()}))
            .collect();
        kubelet.insert(
            "config".into(),
            serde_json::json!({ "registerWithTaints": taints }),
        );
    }
    if !b.labels.is_empty() {
        kubelet.insert(
            "flags".into(),
            serde_json::json!([format!("--node-labels={}", b.labels_flag_value())]),
        );
    }
    let mut spec = serde_json::json!({
        "cluster": {
            "name": b.cluster_name,
            "apiServerEndpoint": b.api_server_endpoint,
            "certificateAuthority": b.certificate_authority,
            "cidr": b.cluster_cidr,
        }
    });
    if !kubelet.is_empty() {
        spec["kubelet"] = serde_json::Value::Object(kubelet);
    }
    let doc = serde_json::json!({"apiVersion": "node.eks.aws/v1alpha1", "kind": "NodeConfig", "spec": spec});
    // serde_yaml cannot fail on a tree of strings, arrays and maps; fall back to JSON (also valid YAML) regardless.
    serde_yaml::to_string(&doc).unwrap_or_else(|_| doc.to_string())
}

/// The class's user data as MIME parts.
fn class_parts(user_data: &str) -> Result<Vec<MimePart>, BootstrapError> {
    let trimmed = user_data.trim_start();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    if trimmed.starts_with("MIME-Version:")
        || trimmed
            .to_ascii_lowercase()
            .starts_with("content-type: multipart/")
    {
        return parse_multipart(user_data)
            .map_err(|reason| BootstrapError::UnsupportedClassUserData { reason });
    }
    if trimmed.starts_with("#!") {
        return Ok(vec![MimePart {
            content_type: "text/x-shellscript; charset=\"us-ascii\"".into(),
            body: user_data.into(),
        }]);
    }
    if trimmed.starts_with("#cloud-config") {
        return Ok(vec![MimePart {
            content_type: "text/cloud-config; charset=\"us-ascii\"".into(),
            body: user_data.into(),
        }]);
    }
    match serde_yaml::from_str::<serde_yaml::Value>(user_data) {
        Ok(v) if v.get("kind").and_then(|k| k.as_str()) == Some("NodeConfig") => {
            Ok(vec![MimePart { content_type: NODECONFIG_CONTENT_TYPE.into(), body: user_data.into() }])
        }
        _ => Err(BootstrapError::UnsupportedClassUserData {
            reason: "expected a MIME multipart document, a script starting with #!, a #cloud-config, or a NodeConfig"
                .into(),
        }),
    }
}

fn al2023(b: &Bootstrap) -> Result<String, BootstrapError> {
    let mut parts = match &b.class_user_data {
        Some(u) => class_parts(u)?,
        None => Vec::new(),
    };
    parts.push(MimePart {
        content_type: NODECONFIG_CONTENT_TYPE.into(),
        body: node_config(b),
    });
    Ok(write_multipart(&parts))
}

/// Writes a multipart/mixed document with a boundary that occurs in no part.
pub fn write_multipart(parts: &[MimePart]) -> String {
    let mut boundary = "BERTH-BOUNDARY".to_string();
    let mut n = 0;
    while parts.iter().any(|p| p.body.contains(&boundary)) {
        n += 1;
        boundary = format!("BERTH-BOUNDARY-{n}");
    }
    let mut out =
        format!("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\n\n");
    for p in parts {
        out.push_str(&format!(
            "--{boundary}\nContent-Type: {}\n\n",
            p.content_type
        ));
        out.push_str(&p.body);
        if !p.body.ends_with('\n') {
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str(&format!("--{boundary}--\n"));
    out
}

/// Reads a multipart/mixed document into its parts (the subset cloud-init and nodeadm read: one level, text parts).
pub fn parse_multipart(doc: &str) -> Result<Vec<MimePart>, String> {
    let doc = doc.replace("\r\n", "\n");
    let (headers, body) = doc
        .split_once("\n\n")
        .ok_or("no blank line after the MIME headers")?;
    let content_type = headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .ok_or("no Content-Type header")?;
    if !content_type.to_ascii_lowercase().starts_with("multipart/") {
        return Err(format!("Content-Type is {content_type}, not multipart"));
    }
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))
        .map(|b| b.trim_matches('"').to_string())
        .ok_or("no boundary in Content-Type")?;
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut closed = false;
    let separator = format!("\n{delimiter}");
    let mut sections = body.split(&separator);
    // The text before the first delimiter is the preamble (the first delimiter may also open the body directly).
    let first = sections.next().unwrap_or("");
    let mut rest: Vec<&str> = sections.collect();
    if let Some(stripped) = first.strip_prefix(&delimiter) {
        rest.insert(0, stripped);
    }
    for section in rest {
        if section.starts_with("--") {
            closed = true;
            break;
        }
        let section = section.strip_prefix('\n').unwrap_or(section);
        let (part_headers, part_body) = section
            .split_once("\n\n")
            .ok_or("a part without a blank line after its headers")?;
        let ct = part_headers
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case("content-type")
                    .then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| "text/plain".into());
        let body = part_body.strip_suffix('\n').unwrap_or(part_body);
        parts.push(MimePart {
            content_type: ct,
            body: format!("{body}\n"),
        });
    }
    if !closed {
        return Err(format!("the closing boundary {delimiter}-- is missing"));
    }
    Ok(parts)
}

// ---------------------------------------------------------------------------------------------------------------
// Bottlerocket

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\u{:04X}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The class's TOML as (table header, lines) in order: a line-level reading that keeps the class's text as is.
/// Supports what Bottlerocket settings use: `[table]` headers and single-line `key = value` pairs.
/// (table header, key = value pairs) in document order.
type TomlSections = Vec<(String, Vec<(String, String)>)>;

fn toml_sections(text: &str) -> Result<TomlSections, BootstrapError> {
    let mut sections: TomlSections = vec![(String::new(), Vec::new())];
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with("[[") {
            return Err(BootstrapError::InvalidToml {
                line: i + 1,
                reason: "arrays of tables are not supported".into(),
            });
        }
        if let Some(h) = line.strip_prefix('[') {
            let name = h
                .strip_suffix(']')
                .ok_or_else(|| BootstrapError::InvalidToml {
                    line: i + 1,
                    reason: "unterminated table header".into(),
                })?;
            sections.push((name.trim().to_string(), Vec::new()));
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| BootstrapError::InvalidToml {
                line: i + 1,
                reason: "expected key = value".into(),
            })?;
        let (k, v) = (k.trim().to_string(), v.trim().to_string());
        if k.is_empty() || v.is_empty() {
            return Err(BootstrapError::InvalidToml {
                line: i + 1,
                reason: "empty key or value".into(),
            });
        }
        if let Some(last) = sections.last_mut() {
            last.1.push((k, v));
        }
    }
    Ok(sections)
}

fn bottlerocket(b: &Bootstrap) -> Result<String, BootstrapError> {
    let mut sections = match &b.class_user_data {
        Some(u) => toml_sections(u)?,
        None => vec![(String::new(), Vec::new())],
    };
    let ours: Vec<(&str, Vec<(String, String)>)> = vec![
        (
            "settings.kubernetes",
            vec![
                ("cluster-name".into(), toml_string(&b.cluster_name)),
                ("api-server".into(), toml_string(&b.api_server_endpoint)),
                (
                    "cluster-certificate".into(),
                    toml_string(&b.certificate_authority),
                ),
            ],
        ),
        (
            "settings.kubernetes.node-labels",
            b.labels
                .iter()
                .map(|(k, v)| (toml_string(k), toml_string(v)))
                .collect(),
        ),
        ("settings.kubernetes.node-taints", {
            // Bottlerocket wants key = ["value:Effect", ...], several taints of one key in one array.
            let mut by_key: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for t in &b.taints {
                by_key
                    .entry(&t.key)
                    .or_default()
                    .push(toml_string(&format!("{}:{}", t.value, t.effect)));
            }
            by_key
                .into_iter()
                .map(|(k, vs)| (toml_string(k), format!("[{}]", vs.join(", "))))
                .collect()
        }),
    ];
    for (table, pairs) in ours {
        if pairs.is_empty() {
            continue;
        }
        let idx = match sections.iter().position(|(name, _)| name == table) {
            Some(i) => i,
            None => {
                sections.push((table.to_string(), Vec::new()));
                sections.len() - 1
            }
        };
        let entries = &mut sections[idx].1;
        for (k, v) in pairs {
            let bare = k.trim_matches('"').to_string();
            entries.retain(|(ek, _)| ek.trim_matches('"') != bare);
            entries.push((k, v));
        }
    }
    let mut out = String::new();
    for (name, entries) in sections {
        if name.is_empty() && entries.is_empty() {
            continue;
        }
        if !name.is_empty() {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&format!("[{name}]\n"));
        }
        for (k, v) in entries {
            out.push_str(&format!("{k} = {v}\n"));
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------------------------
// Custom templates

fn render_template(template: &str, b: &Bootstrap) -> Result<String, BootstrapError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    let mut consumed = 0;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or(BootstrapError::UnterminatedPlaceholder {
                offset: consumed + start,
            })?;
        let name = after[..end].trim();
        let value = match name {
            "ClusterName" => b.cluster_name.clone(),
            "ClusterEndpoint" => b.api_server_endpoint.clone(),
            "CABundle" => b.certificate_authority.clone(),
            "ClusterCIDR" => b.cluster_cidr.clone(),
            "Labels" => b.labels_flag_value(),
            "Taints" => b.taints_flag_value(),
            other => {
                return Err(BootstrapError::UnknownPlaceholder {
                    name: other.to_string(),
                })
            }
        };
        out.push_str(&value);
        consumed += start + 2 + end + 2;
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::taints::TaintEffect;

    fn base(format: BootstrapFormat) -> Bootstrap {
        Bootstrap {
            format,
            cluster_name: "prod".into(),
            api_server_endpoint: "https://ABC.gr7.us-east-1.eks.amazonaws.com".into(),
            certificate_authority: "LS0tLS1CRUdJTg==".into(),
            cluster_cidr: "10.100.0.0/16".into(),
            labels: BTreeMap::from([
                ("berth.dev/machine-deployment".into(), "web".into()),
                ("team".into(), "payments".into()),
            ]),
            taints: vec![
                Taint::new("dedicated", "gpu", TaintEffect::NoSchedule).unwrap(),
                Taint::new("dedicated", "batch", TaintEffect::NoExecute).unwrap(),
                Taint::new("spot", "", TaintEffect::PreferNoSchedule).unwrap(),
            ],
            class_user_data: None,
        }
    }

    fn node_config_of(doc: &str) -> serde_yaml::Value {
        let parts = parse_multipart(doc).unwrap();
        let last = parts.last().unwrap();
        assert_eq!(last.content_type, NODECONFIG_CONTENT_TYPE);
        serde_yaml::from_str(&last.body).unwrap()
    }

    #[test]
    fn al2023_node_config_parses_back() {
        let doc = base(BootstrapFormat::Al2023).render().unwrap();
        assert!(doc.starts_with("MIME-Version: 1.0\n"));
        let parts = parse_multipart(&doc).unwrap();
        assert_eq!(parts.len(), 1);
        let nc = node_config_of(&doc);
        assert_eq!(nc["apiVersion"].as_str(), Some("node.eks.aws/v1alpha1"));
        assert_eq!(nc["kind"].as_str(), Some("NodeConfig"));
        let c = &nc["spec"]["cluster"];
        assert_eq!(c["name"].as_str(), Some("prod"));
        assert_eq!(
            c["apiServerEndpoint"].as_str(),
            Some("https://ABC.gr7.us-east-1.eks.amazonaws.com")
        );
        assert_eq!(c["certificateAuthority"].as_str(), Some("LS0tLS1CRUdJTg=="));
        assert_eq!(c["cidr"].as_str(), Some("10.100.0.0/16"));
        let flags = nc["spec"]["kubelet"]["flags"].as_sequence().unwrap();
        assert_eq!(
            flags[0].as_str(),
            Some("--node-labels=berth.dev/machine-deployment=web,team=payments")
        );
        let taints = nc["spec"]["kubelet"]["config"]["registerWithTaints"]
            .as_sequence()
            .unwrap();
        assert_eq!(taints.len(), 3);
        assert_eq!(taints[0]["key"].as_str(), Some("dedicated"));
        assert_eq!(taints[0]["value"].as_str(), Some("gpu"));
        assert_eq!(taints[0]["effect"].as_str(), Some("NoSchedule"));
        assert_eq!(taints[2]["effect"].as_str(), Some("PreferNoSchedule"));
    }

    #[test]
    fn al2023_without_labels_or_taints_has_no_kubelet_section() {
        let mut b = base(BootstrapFormat::Al2023);
        b.labels.clear();
        b.taints.clear();
        let nc = node_config_of(&b.render().unwrap());
        assert!(nc["spec"].get("kubelet").is_none());
    }

    #[test]
    fn al2023_merges_the_class_parts_first() {
        let mut b = base(BootstrapFormat::Al2023);
        b.class_user_data = Some("#!/bin/bash\necho hello\n".into());
        let parts = parse_multipart(&b.render().unwrap()).unwrap();
        assert_eq!(parts.len(), 2);
        assert!(parts[0].content_type.starts_with("text/x-shellscript"));
        assert_eq!(parts[0].body, "#!/bin/bash\necho hello\n");

        // A MIME document of the class: its parts are kept in order, berth's NodeConfig last.
        let class_doc = write_multipart(&[
            MimePart { content_type: NODECONFIG_CONTENT_TYPE.into(), body: "apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec:\n  kubelet:\n    config:\n      maxPods: 58\n".into() },
            MimePart { content_type: "text/x-shellscript".into(), body: "#!/bin/sh\ntrue\n".into() },
        ]);
        b.class_user_data = Some(class_doc);
        let doc = b.render().unwrap();
        let parts = parse_multipart(&doc).unwrap();
        assert_eq!(parts.len(), 3);
        let first: serde_yaml::Value = serde_yaml::from_str(&parts[0].body).unwrap();
        assert_eq!(
            first["spec"]["kubelet"]["config"]["maxPods"].as_u64(),
            Some(58)
        );
        assert_eq!(parts[1].body, "#!/bin/sh\ntrue\n");
        assert_eq!(
            node_config_of(&doc)["spec"]["cluster"]["name"].as_str(),
            Some("prod")
        );

        // A bare NodeConfig is a part of its own.
        b.class_user_data =
            Some("apiVersion: node.eks.aws/v1alpha1\nkind: NodeConfig\nspec: {}\n".into());
        assert_eq!(
            parse_multipart(&b.render().unwrap()).unwrap()[0].content_type,
            NODECONFIG_CONTENT_TYPE
        );
    }

    #[test]
    fn al2023_rejects_what_nodeadm_cannot_read() {
        let mut b = base(BootstrapFormat::Al2023);
        b.class_user_data = Some("just some words".into());
        assert_eq!(b.render().unwrap_err().category(), "unsupported_user_data");
        b.class_user_data = Some("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"x\"\n\n--x\nContent-Type: text/plain\n\nhi\n".into());
        let e = b.render().unwrap_err();
        assert!(e.to_string().contains("closing boundary"), "{e}");
        let mut b = base(BootstrapFormat::Al2023);
        b.cluster_cidr = "".into();
        assert_eq!(
            b.render().unwrap_err(),
            BootstrapError::MissingField {
                field: "clusterCIDR"
            }
        );
        b.class_user_data = Some(format!("#!/bin/sh\n{}", "x".repeat(MAX_USER_DATA_BYTES)));
        b.cluster_cidr = "10.0.0.0/16".into();
        assert_eq!(b.render().unwrap_err().category(), "too_large");
    }

    #[test]
    fn boundary_avoids_part_contents() {
        let doc = write_multipart(&[MimePart {
            content_type: "text/plain".into(),
            body: "--BERTH-BOUNDARY\n".into(),
        }]);
        assert!(doc.contains("boundary=\"BERTH-BOUNDARY-1\""));
        assert_eq!(parse_multipart(&doc).unwrap()[0].body, "--BERTH-BOUNDARY\n");
    }

    /// A reader for the TOML subset Bottlerocket settings use, to check what is generated independently.
    fn parse_toml(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
        fn unquote(s: &str) -> String {
            let inner = s
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(s);
            inner.replace("\\\"", "\"").replace("\\\\", "\\")
        }
        let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut table = String::new();
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Some(h) = line.strip_prefix('[') {
                table = h.strip_suffix(']').unwrap().to_string();
                assert!(!out.contains_key(&table), "table [{table}] defined twice");
                out.insert(table.clone(), BTreeMap::new());
                continue;
            }
            let (k, v) = line.split_once(" = ").unwrap();
            let v = v.trim();
            let value = if v.starts_with('[') {
                v.trim_matches(|c| c == '[' || c == ']')
                    .split(", ")
                    .map(unquote)
                    .collect::<Vec<_>>()
                    .join("|")
            } else {
                unquote(v)
            };
            let previous = out
                .entry(table.clone())
                .or_default()
                .insert(unquote(k), value);
            assert!(previous.is_none(), "key {k} twice in [{table}]");
        }
        out
    }

    #[test]
    fn bottlerocket_settings_parse_back() {
        let toml = base(BootstrapFormat::Bottlerocket).render().unwrap();
        let t = parse_toml(&toml);
        let k = &t["settings.kubernetes"];
        assert_eq!(k["cluster-name"], "prod");
        assert_eq!(
            k["api-server"],
            "https://ABC.gr7.us-east-1.eks.amazonaws.com"
        );
        assert_eq!(k["cluster-certificate"], "LS0tLS1CRUdJTg==");
        assert_eq!(
            t["settings.kubernetes.node-labels"]["berth.dev/machine-deployment"],
            "web"
        );
        assert_eq!(
            t["settings.kubernetes.node-taints"]["dedicated"],
            "gpu:NoSchedule|batch:NoExecute"
        );
        assert_eq!(
            t["settings.kubernetes.node-taints"]["spot"],
            ":PreferNoSchedule"
        );
    }

    #[test]
    fn bottlerocket_keeps_the_class_settings_and_overrides_only_berths_keys() {
        let mut b = base(BootstrapFormat::Bottlerocket);
        b.class_user_data = Some(
            "# tuned\n[settings.kubernetes]\nmax-pods = 110\ncluster-name = \"wrong\"\n\n[settings.host-containers.admin]\nenabled = true\n".into(),
        );
        let t = parse_toml(&b.render().unwrap());
        assert_eq!(t["settings.kubernetes"]["max-pods"], "110");
        assert_eq!(t["settings.kubernetes"]["cluster-name"], "prod");
        assert_eq!(t["settings.host-containers.admin"]["enabled"], "true");
        b.class_user_data = Some("[settings.kubernetes\nx = 1\n".into());
        assert_eq!(b.render().unwrap_err().category(), "invalid_toml");
        b.class_user_data = Some("[settings]\nnot a pair\n".into());
        assert!(b.render().unwrap_err().to_string().contains("line 2"));
    }

    #[test]
    fn bottlerocket_escapes_quotes() {
        let mut b = base(BootstrapFormat::Bottlerocket);
        b.labels = BTreeMap::from([("odd".into(), "a\"b\\c".into())]);
        let t = parse_toml(&b.render().unwrap());
        assert_eq!(t["settings.kubernetes.node-labels"]["odd"], "a\"b\\c");
    }

    #[test]
    fn custom_templates_render_every_placeholder() {
        let b = base(BootstrapFormat::Custom {
            template: "#!/bin/bash\n/etc/eks/bootstrap.sh {{ ClusterName }} --apiserver-endpoint {{ClusterEndpoint}} --b64-cluster-ca {{CABundle}} --cidr {{ClusterCIDR}} --kubelet-extra-args '--node-labels={{Labels}} --register-with-taints={{Taints}}'\n".into(),
        });
        let out = b.render().unwrap();
        assert_eq!(
            out,
            "#!/bin/bash\n/etc/eks/bootstrap.sh prod --apiserver-endpoint https://ABC.gr7.us-east-1.eks.amazonaws.com --b64-cluster-ca LS0tLS1CRUdJTg== --cidr 10.100.0.0/16 --kubelet-extra-args '--node-labels=berth.dev/machine-deployment=web,team=payments --register-with-taints=dedicated=gpu:NoSchedule,dedicated=batch:NoExecute,spot:PreferNoSchedule'\n"
        );
        let bad = base(BootstrapFormat::Custom {
            template: "{{Nope}}".into(),
        });
        assert_eq!(
            bad.render().unwrap_err(),
            BootstrapError::UnknownPlaceholder {
                name: "Nope".into()
            }
        );
        let bad = base(BootstrapFormat::Custom {
            template: "abc {{ClusterName".into(),
        });
        assert_eq!(
            bad.render().unwrap_err(),
            BootstrapError::UnterminatedPlaceholder { offset: 4 }
        );
    }
}
