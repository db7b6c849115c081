//! Charts as SVG drawn by the server: stacked bars of counts over time. No script, so the
//! console's content security policy stays closed.

use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};

use super::html::esc;

/// Series shown by name; the rest are summed as "other".
const MAX_SERIES: usize = 8;

const COLORS: [&str; MAX_SERIES + 1] = [
    "#3b6fb6", "#d9822b", "#3f9b5a", "#b6443b", "#7b5ab6", "#8c6d3f", "#c25d9b", "#5e6b78",
    "#a9b3bf",
];

/// A bucket width that gives at most about 60 bars over `span`.
pub(super) fn bucket_width(span: TimeDelta) -> TimeDelta {
    for w in [
        TimeDelta::minutes(1),
        TimeDelta::minutes(10),
        TimeDelta::hours(1),
        TimeDelta::hours(6),
        TimeDelta::days(1),
        TimeDelta::days(7),
    ] {
        if span <= w * 60 {
            return w;
        }
    }
    TimeDelta::days(30)
}

/// A bucket's start and its counts by series (None: no events).
type Bucket<'a> = (DateTime<Utc>, Option<&'a BTreeMap<String, u64>>);

/// Counts of series over time buckets.
#[derive(Debug, Default)]
pub(super) struct Series {
    /// bucket start -> series -> count.
    buckets: BTreeMap<DateTime<Utc>, BTreeMap<String, u64>>,
    width: Option<TimeDelta>,
}

impl Series {
    /// Buckets of `width`.
    pub fn new(width: TimeDelta) -> Self {
        Self {
            buckets: BTreeMap::new(),
            width: Some(width),
        }
    }

    /// Count one event of `series` at `time`.
    pub fn add(&mut self, time: DateTime<Utc>, series: &str) {
        let start = match self.width {
            Some(w) => time.duration_trunc(w).unwrap_or(time),
            None => time,
        };
        *self
            .buckets
            .entry(start)
            .or_default()
            .entry(series.to_string())
            .or_default() += 1;
    }

    /// Events counted.
    pub fn total(&self) -> u64 {
        self.buckets.values().flat_map(|s| s.values()).sum()
    }

    /// Every bucket from the first to the last, empty ones included, so gaps show as gaps
    /// (at most 400: past that, only the buckets with events).
    fn filled(&self) -> Vec<Bucket<'_>> {
        let (Some(w), Some((first, _)), Some((last, _))) = (
            self.width,
            self.buckets.first_key_value(),
            self.buckets.last_key_value(),
        ) else {
            return self.buckets.iter().map(|(k, v)| (*k, Some(v))).collect();
        };
        if (*last - *first) / 400 > w {
            return self.buckets.iter().map(|(k, v)| (*k, Some(v))).collect();
        }
        let mut out = Vec::new();
        let mut t = *first;
        while t <= *last {
            out.push((t, self.buckets.get(&t)));
            t += w;
        }
        out
    }

    /// Stacked bars with a legend, `title` read out by screen readers.
    pub fn svg(&self, title: &str) -> String {
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for s in self.buckets.values() {
            for (name, n) in s {
                *totals.entry(name).or_default() += n;
            }
        }
        let mut names: Vec<(&str, u64)> = totals.into_iter().collect();
        names.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let shown: Vec<&str> = names.iter().take(MAX_SERIES).map(|(n, _)| *n).collect();
        let color_of = |name: &str| {
            shown
                .iter()
                .position(|s| *s == name)
                .map_or(COLORS[MAX_SERIES], |i| COLORS[i])
        };
        let (w, h, left, top, bottom, legend_w) = (960.0, 280.0, 44.0, 14.0, 46.0, 200.0);
        let plot_w = w - left - legend_w;
        let plot_h = h - top - bottom;
        let max = self
            .buckets
            .values()
            .map(|s| s.values().sum::<u64>())
            .max()
            .unwrap_or(0)
            .max(1);
        let filled = self.filled();
        let n = filled.len().max(1);
        let slot = plot_w / n as f64;
        let bar = (slot * 0.8).max(1.0);
        let mut out = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" role=\"img\" class=\"chart\" data-total=\"{total}\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\"><title>{t}</title>",
            total = self.total(),
            t = esc(title)
        );
        // Axis and grid: 0, half, max.
        let mut ticks = vec![0, max];
        if max >= 4 {
            ticks.insert(1, max / 2);
        }
        for label in ticks {
            // Placed by value: an integer half of an odd maximum sits where it belongs.
            let y = top + plot_h * (1.0 - label as f64 / max as f64);
            let _ = write!(
                out,
                "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{x2:.1}\" y2=\"{y:.1}\" stroke=\"#d5dae1\"/><text x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"end\">{label}</text>",
                x2 = left + plot_w,
                tx = left - 4.0,
                ty = y + 4.0
            );
        }
        let label_every = (n / 8).max(1);
        let fmt = if self.width.is_some_and(|w| w < TimeDelta::days(1)) {
            "%m-%d %H:%M"
        } else {
            "%Y-%m-%d"
        };
        let empty = BTreeMap::new();
        for (i, (start, series)) in filled.iter().enumerate() {
            let series = series.unwrap_or(&empty);
            let x = left + slot * i as f64 + (slot - bar) / 2.0;
            let mut y = top + plot_h;
            let mut parts: Vec<(&str, u64)> = Vec::new();
            let mut other = 0;
            for (name, count) in series {
                if shown.contains(&name.as_str()) {
                    parts.push((name, *count));
                } else {
                    other += count;
                }
            }
            parts.sort_by_key(|(name, _)| shown.iter().position(|s| s == name));
            if other > 0 {
                parts.push(("other", other));
            }
            for (name, count) in parts {
                let bh = plot_h * count as f64 / max as f64;
                y -= bh;
                let _ = write!(
                    out,
                    "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{bar:.1}\" height=\"{bh:.1}\" fill=\"{c}\" data-series=\"{s}\" data-count=\"{count}\"><title>{when}: {s} {count}</title></rect>",
                    c = if name == "other" {
                        COLORS[MAX_SERIES]
                    } else {
                        color_of(name)
                    },
                    s = esc(name),
                    when = start.format(fmt),
                );
            }
            if i % label_every == 0 {
                let _ = write!(
                    out,
                    "<text x=\"{cx:.1}\" y=\"{ly:.1}\" text-anchor=\"middle\">{}</text>",
                    start.format(fmt),
                    cx = x + bar / 2.0,
                    ly = top + plot_h + 16.0
                );
            }
        }
        let mut ly = top + 6.0;
        let lx = left + plot_w + 16.0;
        let mut legend: Vec<(&str, u64)> = names.iter().take(MAX_SERIES).copied().collect();
        let rest: u64 = names.iter().skip(MAX_SERIES).map(|(_, c)| c).sum();
        if rest > 0 {
            legend.push(("other", rest));
        }
        for (name, count) in legend {
            let c = if name == "other" && !shown.contains(&"other") {
                COLORS[MAX_SERIES]
            } else {
                color_of(name)
            };
            let _ = write!(
                out,
                "<rect x=\"{lx:.1}\" y=\"{ry:.1}\" width=\"10\" height=\"10\" fill=\"{c}\"/><text x=\"{tx:.1}\" y=\"{ty:.1}\" class=\"legend\">{s} ({count})</text>",
                ry = ly - 9.0,
                tx = lx + 14.0,
                ty = ly,
                s = esc(name)
            );
            ly += 18.0;
        }
        out.push_str("</svg>");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_chosen_by_span() {
        assert_eq!(bucket_width(TimeDelta::minutes(30)), TimeDelta::minutes(1));
        assert_eq!(bucket_width(TimeDelta::hours(5)), TimeDelta::minutes(10));
        assert_eq!(bucket_width(TimeDelta::days(40)), TimeDelta::days(1));
    }

    #[test]
    fn stacks_counts_and_escapes_names() {
        let mut s = Series::new(TimeDelta::minutes(1));
        let t = DateTime::parse_from_rfc3339("2026-12-02T10:00:30Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap();
        s.add(t, "alice");
        s.add(t, "<bob>");
        s.add(t + TimeDelta::minutes(2), "alice");
        assert_eq!(s.total(), 3);
        let svg = s.svg("activity");
        assert!(svg.contains("data-total=\"3\""), "{svg}");
        assert!(
            svg.contains("data-series=\"&lt;bob&gt;\" data-count=\"1\""),
            "{svg}"
        );
        assert!(svg.contains("alice (2)"), "{svg}");
        assert!(!svg.contains("<bob>"), "{svg}");
        // Two buckets with events: two bars of alice, one of bob.
        assert_eq!(svg.matches("data-series=\"alice\"").count(), 2);
    }
}
