//! Just enough of the Kubernetes protobuf encoding to read the DeleteOptions that typed clients (kubectl drain's
//! evictions and deletions) send as protobuf. Full objects in protobuf are refused with 415.

use serde_json::{json, Value};

/// The `k8s\0` magic prefix of Kubernetes protobuf payloads.
const MAGIC: &[u8] = b"k8s\x00";

/// A field of a protobuf message: number and payload (varint value or length-delimited bytes).
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut out = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(out);
        }
    }
    None
}

fn fields(buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let (num, wire) = (key >> 3, key & 7);
        match wire {
            0 => out.push((num, Field::Varint(varint(buf, &mut pos)?))),
            1 => pos = pos.checked_add(8)?,
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let end = pos.checked_add(len)?;
                out.push((num, Field::Bytes(buf.get(pos..end)?)));
                pos = end;
            }
            5 => pos = pos.checked_add(4)?,
            _ => return None,
        }
    }
    (pos == buf.len()).then_some(out)
}

fn string(f: &Field<'_>) -> Option<String> {
    match f {
        Field::Bytes(b) => std::str::from_utf8(b).ok().map(str::to_string),
        Field::Varint(_) => None,
    }
}

/// Decodes a protobuf `runtime.Unknown` envelope to (kind, raw message).
fn envelope(buf: &[u8]) -> Option<(String, &[u8])> {
    let body = buf.strip_prefix(MAGIC)?;
    let mut kind = String::new();
    let mut raw: &[u8] = &[];
    for (num, f) in fields(body)? {
        match (num, &f) {
            (1, Field::Bytes(tm)) => {
                for (n, tf) in fields(tm)? {
                    if n == 2 {
                        kind = string(&tf)?;
                    }
                }
            }
            (2, Field::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    Some((kind, raw))
}

/// metav1.DeleteOptions from its protobuf message, as JSON.
fn delete_options(msg: &[u8]) -> Option<Value> {
    let mut out = json!({});
    for (num, f) in fields(msg)? {
        match (num, &f) {
            (1, Field::Varint(v)) => out["gracePeriodSeconds"] = json!(*v as i64),
            (2, Field::Bytes(p)) => {
                let mut pre = json!({});
                for (n, pf) in fields(p)? {
                    match n {
                        1 => pre["uid"] = json!(string(&pf)?),
                        2 => pre["resourceVersion"] = json!(string(&pf)?),
                        _ => {}
                    }
                }
                out["preconditions"] = pre;
            }
            (3, Field::Varint(v)) => out["orphanDependents"] = json!(*v != 0),
            (4, f) => out["propagationPolicy"] = json!(string(f)?),
            (5, f) => {
                let d = string(f)?;
                let list = out
                    .get("dryRun")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                let mut list = list;
                list.push(json!(d));
                out["dryRun"] = json!(list);
            }
            _ => {}
        }
    }
    Some(out)
}

/// Decodes a protobuf DeleteOptions or Eviction body to its JSON form; None when it is anything else.
pub fn decode(buf: &[u8]) -> Option<Value> {
    let (kind, raw) = envelope(buf)?;
    match kind.as_str() {
        "DeleteOptions" => delete_options(raw),
        "Eviction" => {
            let mut out = json!({"apiVersion": "policy/v1", "kind": "Eviction"});
            for (num, f) in fields(raw)? {
                if let (2, Field::Bytes(d)) = (num, &f) {
                    out["deleteOptions"] = delete_options(d)?;
                }
            }
            Some(out)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ld(num: u8, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![(num << 3) | 2, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }

    #[test]
    fn eviction_with_options() {
        let mut opts = ld(4, b"Foreground");
        opts.extend(ld(2, &ld(1, b"abc")));
        let eviction = ld(2, &opts);
        let mut env = MAGIC.to_vec();
        let mut tm = ld(1, b"policy/v1");
        tm.extend(ld(2, b"Eviction"));
        env.extend(ld(1, &tm));
        env.extend(ld(2, &eviction));
        let v = decode(&env).unwrap();
        assert_eq!(v["deleteOptions"]["propagationPolicy"], "Foreground");
        assert_eq!(v["deleteOptions"]["preconditions"]["uid"], "abc");
        assert!(decode(b"k8s\x00\xff\xff").is_none());
        assert!(decode(b"garbage").is_none());
    }
}
