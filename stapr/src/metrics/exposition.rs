//! Pure: the text exposition format 0.0.4. Families with their help text and type, and
//! the samples of each.

use std::fmt::Write as _;

/// A metric family's name, help text and type.
#[derive(Debug)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    Counter,
    Gauge,
    /// With the upper bounds (seconds) of its buckets; `+Inf` follows.
    Histogram(&'static [f64]),
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram(_) => "histogram",
        }
    }
}

/// One line of a family: the name's suffix (`_bucket`...), labels and value.
pub struct Sample {
    pub suffix: &'static str,
    pub labels: Vec<(&'static str, String)>,
    pub value: String,
}

impl Sample {
    pub fn new(labels: Vec<(&'static str, String)>, value: u64) -> Self {
        Sample {
            suffix: "",
            labels,
            value: value.to_string(),
        }
    }

    pub fn suffix(mut self, suffix: &'static str) -> Self {
        self.suffix = suffix;
        self
    }
}

/// Every family with its samples, in the order given.
pub fn render<'a>(families: impl IntoIterator<Item = (&'a Family, Vec<Sample>)>) -> String {
    let mut out = String::new();
    for (f, samples) in families {
        let _ = writeln!(
            out,
            "# HELP {0} {1}\n# TYPE {0} {2}",
            f.name,
            f.help,
            f.kind.name()
        );
        for s in samples {
            out.push_str(f.name);
            out.push_str(s.suffix);
            if !s.labels.is_empty() {
                let labels: Vec<String> = s
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                    .collect();
                let _ = write!(out, "{{{}}}", labels.join(","));
            }
            let _ = writeln!(out, " {}", s.value);
        }
    }
    out
}

/// A label value as the exposition format wants it: `\`, `"` and newline escaped.
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// A float as Prometheus prints one: shortest exact form, no exponent surprises.
pub fn float(v: f64) -> String {
    let s = v.to_string();
    if s.contains('.') || s.contains('e') || s.contains("inf") || s.contains("NaN") {
        s
    } else {
        s + ".0"
    }
}

/// The exporter's own families, after the reports'.
pub const EVENTS: Family = Family {
    name: "stapr_events_total",
    help: "Events the probes counted: packets (nettop), reads and writes (disktop), files reported closed (slowopen).",
    kind: Kind::Counter,
};
pub const EVENTS_LOST: Family = Family {
    name: "stapr_events_lost_total",
    help: "Events the probes could not count, by reason (table_full: an in-kernel table was full; ringbuf_full: the ring buffer was; open_args_full: slowopen's table of opens in progress was; ledger_failed: a socket's ledger could not be made; writer_failed: a socket's writer could not be noted).",
    kind: Kind::Counter,
};
pub const PROBES_ATTACHED: Family = Family {
    name: "stapr_probes_attached",
    help: "Probes attached in the kernel, per report and method.",
    kind: Kind::Gauge,
};
pub const SERIES: Family = Family {
    name: "stapr_series",
    help: "Labelled series this exporter holds (a histogram counts once).",
    kind: Kind::Gauge,
};
pub const FORGOTTEN: Family = Family {
    name: "stapr_series_forgotten_total",
    help: "Series dropped because their process had gone (or, --by comm, they were idle) for --forget-after.",
    kind: Kind::Counter,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(escape("x\ny"), "x\\ny");
        assert_eq!(float(2.0), "2.0");
        assert_eq!(float(2.52), "2.52");
    }
}
