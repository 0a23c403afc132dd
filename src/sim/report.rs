//! The HTML report: one self-contained file (inline CSS and SVG, no scripts, no network) with the summary table and
//! charts over time: pending pods, nodes by group and capacity type, hourly cost, utilization. Pure over the
//! outcome, with fixed number formats, so the same run gives the same bytes.

use super::summary::{rows, summarize, Outcome};
use std::collections::{BTreeMap, BTreeSet};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 36.0;
const COLOURS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A round axis maximum at or above `max` (1, 2, 2.5 or 5 times a power of ten).
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|v| *v >= max)
        .unwrap_or(10.0 * p)
}

fn fmt_value(v: f64) -> String {
    if v >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// A vertical line on a chart at a moment of the run, with a tooltip.
#[derive(Debug, Clone, PartialEq)]
pub struct Marker {
    pub t_s: u64,
    pub what: String,
    /// The line's style: the timeline's events, spot interruption warnings, terminations of interrupted instances.
    pub kind: MarkerKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkerKind {
    Event,
    InterruptionWarning,
    InterruptionTermination,
}

impl MarkerKind {
    fn class(self) -> &'static str {
        match self {
            MarkerKind::Event => "marker",
            MarkerKind::InterruptionWarning => "marker warning",
            MarkerKind::InterruptionTermination => "marker termination",
        }
    }
}

/// The markers of a run: the timeline's events, then one per second at which EC2 warned of spot interruptions and
/// one per second at which interrupted instances terminated (saying how many, and how many berth terminated first).
pub fn markers(o: &Outcome) -> Vec<Marker> {
    let mut out: Vec<Marker> = o
        .events
        .iter()
        .map(|(t, what)| Marker {
            t_s: *t,
            what: what.clone(),
            kind: MarkerKind::Event,
        })
        .collect();
    let mut warned: BTreeMap<u64, u32> = BTreeMap::new();
    let mut terminated: BTreeMap<u64, (u32, u32)> = BTreeMap::new();
    for r in &o.interruptions {
        if r.warning {
            *warned.entry(r.warned_s).or_default() += 1;
        }
        if let Some(t) = r.terminated_s {
            let e = terminated.entry(t).or_default();
            e.0 += 1;
            e.1 += u32::from(r.terminated_by_berth);
        }
    }
    out.extend(warned.into_iter().map(|(t, n)| Marker {
        t_s: t,
        what: format!("EC2 warns of {n} spot interruptions"),
        kind: MarkerKind::InterruptionWarning,
    }));
    out.extend(terminated.into_iter().map(|(t, (n, berth))| Marker {
        t_s: t,
        what: format!("{n} interrupted instances terminated ({berth} by berth after draining)"),
        kind: MarkerKind::InterruptionTermination,
    }));
    out
}

/// A line chart as inline SVG: one `<path class="series">` per series, x in seconds.
pub fn line_chart(
    id: &str,
    title: &str,
    unit: &str,
    xs: &[u64],
    series: &[(String, Vec<f64>)],
    markers: &[Marker],
) -> String {
    let x_max = xs.last().copied().unwrap_or(1).max(1) as f64;
    let y_max = nice_max(
        series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(0.0, f64::max),
    );
    let px = |x: f64| LEFT + x / x_max * (WIDTH - LEFT - RIGHT);
    let py = |y: f64| TOP + (1.0 - y / y_max) * (HEIGHT - TOP - BOTTOM);
    let mut svg = format!(
        "<figure><figcaption>{}</figcaption><svg id=\"{id}\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"{}\">\n",
        escape(title),
        escape(title)
    );
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let y = py(v);
        svg.push_str(&format!(
            "<line class=\"grid\" x1=\"{LEFT:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\"/><text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_value(v)
        ));
    }
    // Whole minutes at a round step, at most eight ticks.
    let step = [60u64, 120, 300, 600, 900, 1200, 1800, 3600, 7200, 14_400]
        .into_iter()
        .find(|s| x_max / *s as f64 <= 8.0)
        .unwrap_or(28_800);
    for t in (0..=x_max as u64).step_by(step as usize) {
        svg.push_str(&format!(
            "<text class=\"tick\" x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}m</text>\n",
            px(t as f64),
            HEIGHT - BOTTOM + 16.0,
            t / 60
        ));
    }
    svg.push_str(&format!(
        "<text class=\"unit\" x=\"{LEFT:.1}\" y=\"{:.1}\">{}</text>\n",
        HEIGHT - 4.0,
        escape(unit)
    ));
    for m in markers {
        let x = px(m.t_s as f64);
        svg.push_str(&format!(
            "<line class=\"{}\" x1=\"{x:.1}\" y1=\"{TOP:.1}\" x2=\"{x:.1}\" y2=\"{:.1}\"><title>{}s: {}</title></line>\n",
            m.kind.class(),
            HEIGHT - BOTTOM,
            m.t_s,
            escape(&m.what)
        ));
    }
    for (k, (name, values)) in series.iter().enumerate() {
        let colour = COLOURS[k % COLOURS.len()];
        let d: Vec<String> = xs
            .iter()
            .zip(values)
            .enumerate()
            .map(|(i, (x, y))| {
                format!(
                    "{}{:.1} {:.1}",
                    if i == 0 { "M" } else { "L" },
                    px(*x as f64),
                    py(*y)
                )
            })
            .collect();
        svg.push_str(&format!(
            "<path class=\"series\" data-series=\"{}\" d=\"{}\" stroke=\"{colour}\"/>\n",
            escape(name),
            d.join(" ")
        ));
        svg.push_str(&format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\"/><text class=\"legend\" x=\"{:.1}\" y=\"{:.1}\">{}</text>\n",
            LEFT + 8.0 + 170.0 * (k % 4) as f64,
            TOP + 4.0 + 14.0 * (k / 4) as f64,
            LEFT + 22.0 + 170.0 * (k % 4) as f64,
            TOP + 13.0 + 14.0 * (k / 4) as f64,
            escape(name)
        ));
    }
    svg.push_str("</svg></figure>\n");
    svg
}

/// The whole report for one run, or two side by side when `other` is given.
pub fn html(main: &Outcome, other: Option<&Outcome>) -> String {
    let runs: Vec<&Outcome> = std::iter::once(main).chain(other).collect();
    let mut body = String::new();
    body.push_str(&format!(
        "<h1>berth simulate: {}</h1>\n<p>seed {}, {} s of cluster time",
        escape(&main.scenario),
        main.seed,
        main.duration_s
    ));
    if runs.len() > 1 {
        body.push_str(&format!(
            ", compared: {}",
            runs.iter()
                .map(|r| escape(&r.label))
                .collect::<Vec<_>>()
                .join(" vs ")
        ));
    }
    body.push_str("</p>\n<table class=\"summary\"><tr><th>figure</th>");
    for r in &runs {
        body.push_str(&format!(
            "<th>{}</th>",
            escape(if r.label.is_empty() {
                "value"
            } else {
                &r.label
            })
        ));
    }
    body.push_str("</tr>\n");
    let all_rows: Vec<Vec<(String, String)>> = runs.iter().map(|r| rows(&summarize(r))).collect();
    for (k, _) in &all_rows[0] {
        body.push_str(&format!("<tr><td>{}</td>", escape(k)));
        for rs in &all_rows {
            let v = rs
                .iter()
                .find(|(x, _)| x == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("-");
            body.push_str(&format!("<td>{}</td>", escape(v)));
        }
        body.push_str("</tr>\n");
    }
    body.push_str("</table>\n");

    for (n, r) in runs.iter().enumerate() {
        let suffix = if runs.len() > 1 {
            format!(" ({})", r.label)
        } else {
            String::new()
        };
        let xs: Vec<u64> = r.samples.iter().map(|s| s.t_s).collect();
        let markers = &markers(r);
        body.push_str(&line_chart(
            &format!("pending-{n}"),
            &format!("Pending pods{suffix}"),
            "pods",
            &xs,
            &[
                (
                    "pending".into(),
                    r.samples.iter().map(|s| s.pods_pending as f64).collect(),
                ),
                (
                    "running".into(),
                    r.samples.iter().map(|s| s.pods_running as f64).collect(),
                ),
            ],
            markers,
        ));
        let groups: BTreeSet<String> = r
            .samples
            .iter()
            .flat_map(|s| s.nodes.keys().cloned())
            .collect();
        let mut node_series: Vec<(String, Vec<f64>)> = groups
            .iter()
            .map(|g| {
                (
                    g.clone(),
                    r.samples
                        .iter()
                        .map(|s| s.nodes.get(g).copied().unwrap_or(0) as f64)
                        .collect(),
                )
            })
            .collect();
        node_series.push((
            "total".into(),
            r.samples
                .iter()
                .map(|s| s.nodes.values().sum::<u32>() as f64)
                .collect(),
        ));
        body.push_str(&line_chart(
            &format!("nodes-{n}"),
            &format!("Nodes by group and capacity type{suffix}"),
            "nodes",
            &xs,
            &node_series,
            markers,
        ));
        body.push_str(&line_chart(
            &format!("cost-{n}"),
            &format!("Hourly cost{suffix}"),
            "USD per hour",
            &xs,
            &[(
                "hourly cost".into(),
                r.samples.iter().map(|s| s.hourly_cost).collect(),
            )],
            markers,
        ));
        body.push_str(&line_chart(
            &format!("utilization-{n}"),
            &format!("Utilization (requested / allocatable){suffix}"),
            "percent",
            &xs,
            &[
                (
                    "cpu".into(),
                    r.samples
                        .iter()
                        .map(|s| s.cpu_utilization * 100.0)
                        .collect(),
                ),
                (
                    "memory".into(),
                    r.samples
                        .iter()
                        .map(|s| s.memory_utilization * 100.0)
                        .collect(),
                ),
            ],
            markers,
        ));
        body.push_str(&format!(
            "<h2>Timeline{}</h2>\n<ul class=\"events\">\n",
            escape(&suffix)
        ));
        let mut timeline = markers.clone();
        timeline.sort_by_key(|m| m.t_s);
        for m in &timeline {
            body.push_str(&format!(
                "<li class=\"{}\"><code>{:>5}s</code> {}</li>\n",
                m.kind.class(),
                m.t_s,
                escape(&m.what)
            ));
        }
        body.push_str("</ul>\n");
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>berth simulate: {}</title>\n<style>\n{CSS}</style></head>\n<body>\n{body}</body></html>\n",
        escape(&main.scenario)
    )
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:820px}
table.summary{border-collapse:collapse;margin:1em 0}
table.summary td,table.summary th{border-bottom:1px solid #ddd;padding:2px 10px;text-align:right}
table.summary td:first-child,table.summary th:first-child{text-align:left}
figure{margin:1.5em 0}figcaption{font-weight:600;margin-bottom:4px}
svg.chart{background:#fafafa;border:1px solid #e4e4e4}
.grid{stroke:#e0e0e0;stroke-width:1}
.tick,.unit,.legend{font-size:11px;fill:#555}
.series{fill:none;stroke-width:1.8}
.marker{stroke:#999;stroke-dasharray:3 3}
.marker.warning{stroke:#ff7f0e;stroke-dasharray:6 3}
.marker.termination{stroke:#d62728;stroke-dasharray:none}
li.marker.warning code{color:#ff7f0e}li.marker.termination code{color:#d62728}
ul.events{font-size:13px}
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charts_have_one_path_per_series_with_every_point() {
        let svg = line_chart(
            "c",
            "T",
            "u",
            &[0, 10, 20],
            &[
                ("a".into(), vec![0.0, 5.0, 3.0]),
                ("b".into(), vec![1.0, 1.0, 1.0]),
            ],
            &[
                Marker {
                    t_s: 10,
                    what: "x".into(),
                    kind: MarkerKind::Event,
                },
                Marker {
                    t_s: 15,
                    what: "w".into(),
                    kind: MarkerKind::InterruptionWarning,
                },
            ],
        );
        assert_eq!(svg.matches("<path class=\"series\"").count(), 2);
        let d = svg
            .split(" d=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        assert_eq!(d.matches('L').count(), 2, "{d}");
        assert!(svg.contains("class=\"marker\""));
        assert!(svg.contains("class=\"marker warning\""));
    }

    #[test]
    fn axis_maxima_are_round() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(1830.0), 2000.0);
        assert_eq!(nice_max(0.42), 0.5);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(escape("<a&\"b\">"), "&lt;a&amp;&quot;b&quot;&gt;");
    }
}
