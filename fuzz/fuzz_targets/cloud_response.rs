//! What berth reads itself out of EC2's answers: instance states, architectures and capacity types as EC2 spells
//! them, provider IDs (`aws:///<zone>/<instance id>`), AMI name wildcards as DescribeImages applies them, and the
//! choice of the newest image (`src/cloud/resolve.rs`, `src/garbage/`, `src/cloud/mod.rs`,
//! `src/model/instance_type.rs`).
//!
//! Input: lines. The first is a name pattern; each further line is an image `id|name|arch|creationDate`.
#![no_main]

use berth::cloud::resolve::{newest_image, wildcard_match, ImageInfo};
use berth::cloud::InstanceState;
use berth::garbage::parse_provider_id;
use berth::model::instance_type::{Arch, CapacityType};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.lines();
    let pattern = lines.next().unwrap_or_default();

    // Every word EC2 might send is read or refused; what is read is written back the same way.
    for word in text.split(['\n', '|']) {
        if let Some(state) = InstanceState::parse(word) {
            assert_eq!(state.as_str(), word);
        }
        let _ = Arch::parse(word);
        let _ = CapacityType::parse(word);
        if let Some((zone, id)) = parse_provider_id(word) {
            assert_eq!(
                format!("aws:///{zone}/{id}"),
                word,
                "provider ID read back differently"
            );
            assert!(id.starts_with("i-") && !zone.is_empty());
        }
    }

    let images: Vec<ImageInfo> = lines
        .filter_map(|line| {
            let mut f = line.split('|');
            let (id, name, arch, created) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some(ImageInfo {
                id: id.into(),
                name: name.into(),
                owner: "amazon".into(),
                arch: Arch::parse(arch),
                creation_date: created.into(),
                tags: BTreeMap::new(),
            })
        })
        .collect();
    for image in &images {
        let matched = wildcard_match(pattern, &image.name);
        // A pattern without wildcards matches exactly itself; `*` matches anything.
        if !pattern.contains(['*', '?']) {
            assert_eq!(
                matched,
                pattern == image.name,
                "{pattern:?} vs {:?}",
                image.name
            );
        }
        assert!(wildcard_match("*", &image.name));
    }
    for arch in [Arch::Amd64, Arch::Arm64] {
        if let Some(newest) = newest_image(&images, arch) {
            assert_eq!(newest.arch, Some(arch));
            assert!(
                images
                    .iter()
                    .filter(|i| i.arch == Some(arch))
                    .all(|i| i.creation_date <= newest.creation_date),
                "{} is not the newest {arch:?} image",
                newest.id
            );
        }
    }
});
