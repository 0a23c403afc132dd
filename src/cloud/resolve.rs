//! Pure selection rules for the resources a class names by selector: the newest matching AMI of the right
//! architecture, tag selectors (`*` = the key is present), and name wildcards as DescribeImages reads them.

use crate::model::instance_type::Arch;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub arch: Option<Arch>,
    /// ISO 8601, as EC2 reports CreationDate (sorts chronologically as text).
    pub creation_date: String,
    pub tags: BTreeMap<String, String>,
}

/// The newest image of `arch` (ties broken by id, so the choice is deterministic).
pub fn newest_image(images: &[ImageInfo], arch: Arch) -> Option<&ImageInfo> {
    images
        .iter()
        .filter(|i| i.arch == Some(arch))
        .max_by(|a, b| {
            a.creation_date
                .cmp(&b.creation_date)
                .then_with(|| b.id.cmp(&a.id))
        })
}

/// Every selector tag is on the resource; a `*` value only needs the key.
pub fn tags_match(selector: &BTreeMap<String, String>, tags: &BTreeMap<String, String>) -> bool {
    selector
        .iter()
        .all(|(k, v)| tags.get(k).is_some_and(|actual| v == "*" || actual == v))
}

/// `*` matches any run of characters, `?` exactly one.
pub fn wildcard_match(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        // A `*` is always a wildcard, even where the name itself has a `*` (tested first, or the literal match
        // would consume it and lose the wildcard).
        if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(id: &str, date: &str, arch: Arch) -> ImageInfo {
        ImageInfo {
            id: id.into(),
            name: format!("al2023-{id}"),
            owner: "amazon".into(),
            arch: Some(arch),
            creation_date: date.into(),
            tags: BTreeMap::new(),
        }
    }

    #[test]
    fn newest_of_the_arch_wins() {
        let images = vec![
            img("ami-1", "2024-01-01T00:00:00.000Z", Arch::Amd64),
            img("ami-2", "2024-06-01T00:00:00.000Z", Arch::Amd64),
            img("ami-3", "2025-01-01T00:00:00.000Z", Arch::Arm64),
        ];
        assert_eq!(newest_image(&images, Arch::Amd64).unwrap().id, "ami-2");
        assert_eq!(newest_image(&images, Arch::Arm64).unwrap().id, "ami-3");
        assert!(newest_image(&images[..2], Arch::Arm64).is_none());
    }

    /// Found by fuzz/fuzz_targets/cloud_response.rs: `*` matched a name starting with `*` as a literal and then
    /// refused the rest of the name.
    #[test]
    fn a_star_stays_a_wildcard_where_the_name_has_a_star() {
        assert!(wildcard_match("*", "*\0\0\x0023-ami-2023.6"));
        assert!(wildcard_match("al2023-*-x86_64", "al2023-*-kernel-x86_64"));
        assert!(wildcard_match("a*", "a*b"));
        assert!(!wildcard_match("a*c", "a*b"));
    }

    #[test]
    fn selectors_and_wildcards() {
        let tags = BTreeMap::from([
            ("env".to_string(), "prod".to_string()),
            ("tier".to_string(), "private".to_string()),
        ]);
        assert!(tags_match(
            &BTreeMap::from([("env".into(), "prod".into())]),
            &tags
        ));
        assert!(tags_match(
            &BTreeMap::from([("tier".into(), "*".into())]),
            &tags
        ));
        assert!(!tags_match(
            &BTreeMap::from([("env".into(), "dev".into())]),
            &tags
        ));
        assert!(!tags_match(
            &BTreeMap::from([("zone".into(), "*".into())]),
            &tags
        ));
        assert!(wildcard_match(
            "amazon-eks-node-al2023-x86_64-standard-1.33-*",
            "amazon-eks-node-al2023-x86_64-standard-1.33-v20250101"
        ));
        assert!(wildcard_match("a?c*", "abcdef"));
        assert!(!wildcard_match("a?c", "abcd"));
        assert!(wildcard_match("*", ""));
        assert!(!wildcard_match("x*", "y"));
    }
}
