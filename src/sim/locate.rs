//! Finds the line of a field in block-style YAML text, so that errors found after parsing (a bad quantity, a time
//! out of order, a field the CRD schema does not know) name the line as serde's own errors do. serde_yaml keeps no
//! positions in its values, and scenario files are block YAML written by people, which this small indentation
//! walk understands; inside flow collections (`{a: 1}`) or block scalars it answers the nearest enclosing line.

/// One step of a path: a mapping key or a sequence index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Key(String),
    Index(usize),
}

/// Parses a path such as `timeline[3].scale.replicas` or `spec.template.spec.foo` (a leading `.` is allowed).
pub fn parse_path(path: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    for part in path
        .trim_start_matches('.')
        .split('.')
        .filter(|p| !p.is_empty())
    {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Segment::Key(key.to_string()));
        }
        while let Some(close) = rest.find(']') {
            if let Ok(i) = rest[1..close].parse() {
                out.push(Segment::Index(i));
            }
            rest = &rest[close + 1..];
        }
    }
    out
}

#[derive(Debug)]
struct Line<'a> {
    /// Column of the mapping key on this line (after any `- ` item markers), if the line holds a key.
    key_col: Option<usize>,
    key: Option<&'a str>,
    /// Column of the first `- ` item marker, if the line starts a sequence item.
    item_col: Option<usize>,
    /// Column of the first character.
    indent: usize,
    /// Whether the key's value is empty on this line (a nested block follows).
    opens_block: bool,
}

fn scan(text: &str) -> Vec<Option<Line<'_>>> {
    text.lines()
        .map(|raw| {
            let indent = raw.len() - raw.trim_start_matches(' ').len();
            let mut rest = &raw[indent..];
            if rest.is_empty() || rest.starts_with('#') {
                return None;
            }
            let mut col = indent;
            let mut item_col = None;
            while rest == "-" || rest.starts_with("- ") {
                item_col.get_or_insert(col);
                let skipped = rest.len() - rest[1..].trim_start_matches(' ').len();
                col += skipped;
                rest = &rest[skipped.min(rest.len())..];
            }
            let (key, opens_block) = match rest
                .find(": ")
                .or_else(|| rest.strip_suffix(':').map(|k| k.len()))
            {
                Some(i) if !rest.starts_with(['{', '[', '"', '\'']) => {
                    let value = rest[i + 1..].trim();
                    (
                        Some(rest[..i].trim()),
                        value.is_empty() || value.starts_with('#') || value == "|" || value == ">",
                    )
                }
                _ => (None, false),
            };
            Some(Line {
                key_col: key.map(|_| col),
                key,
                item_col,
                indent,
                opens_block,
            })
        })
        .collect()
}

/// The 1-based line of `path` in `text`, or of its deepest ancestor found; None when not even the first step is.
pub fn locate(text: &str, path: &[Segment]) -> Option<usize> {
    let lines = scan(text);
    let (mut start, mut end) = (0usize, lines.len());
    let mut found: Option<usize> = None;
    for seg in path {
        let in_range = || (start..end).filter_map(|i| lines[i].as_ref().map(|l| (i, l)));
        match seg {
            Segment::Key(k) => {
                let Some(level) = in_range().filter_map(|(_, l)| l.key_col).min() else {
                    break;
                };
                let Some((idx, line)) =
                    in_range().find(|(_, l)| l.key_col == Some(level) && l.key == Some(k.as_str()))
                else {
                    break;
                };
                found = Some(idx);
                let opens = line.opens_block;
                let stop = (idx + 1..end)
                    .find(|&i| {
                        lines[i].as_ref().is_some_and(|l| match l.item_col {
                            // A sequence may sit at its key's own indentation.
                            Some(c) => c < level || (c == level && !opens),
                            None => l.indent <= level,
                        })
                    })
                    .unwrap_or(end);
                (start, end) = (idx + 1, stop);
            }
            Segment::Index(n) => {
                let Some(level) = in_range().filter_map(|(_, l)| l.item_col).min() else {
                    break;
                };
                let Some(idx) = in_range()
                    .filter(|(_, l)| l.item_col == Some(level))
                    .nth(*n)
                    .map(|(i, _)| i)
                else {
                    break;
                };
                found = Some(idx);
                let stop = (idx + 1..end)
                    .find(|&i| {
                        lines[i]
                            .as_ref()
                            .is_some_and(|l| l.item_col.map_or(l.indent <= level, |c| c <= level))
                    })
                    .unwrap_or(end);
                // The item's first key lives on the marker line itself.
                (start, end) = (idx, stop);
            }
        }
    }
    found.map(|i| i + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
name: demo
# a comment
timeline:
- at: 0s
  deployment:
    name: web
    cpu: 500m
- at: 5m
  scale: {deployment: web, replicas: 3}
berth:
  machineDeployments:
    - name: general
      spec:
        template:
          spec:
            classRef: {name: general}
            foo: bar
";

    #[test]
    fn finds_keys_and_items() {
        let at = |p: &str| locate(TEXT, &parse_path(p));
        assert_eq!(at("name"), Some(1));
        assert_eq!(at("timeline"), Some(3));
        assert_eq!(at("timeline[0].at"), Some(4));
        assert_eq!(at("timeline[0].deployment.cpu"), Some(7));
        assert_eq!(at("timeline[1].at"), Some(8));
        assert_eq!(
            at("timeline[1].scale.replicas"),
            Some(9),
            "inside a flow mapping: the enclosing line"
        );
        assert_eq!(
            at("berth.machineDeployments[0].spec.template.spec.foo"),
            Some(17)
        );
        assert_eq!(
            at("berth.machineDeployments[0].spec.template.spec.missing"),
            Some(15),
            "deepest ancestor"
        );
        assert_eq!(at("nothing"), None);
    }

    #[test]
    fn parses_paths() {
        assert_eq!(
            parse_path(".timeline[2].scale"),
            vec![
                Segment::Key("timeline".into()),
                Segment::Index(2),
                Segment::Key("scale".into())
            ]
        );
    }
}
