//! Prometheus text exposition, shared by the admin listener's metrics and
//! the live mode switch's.

use std::fmt::Write as _;

/// Prometheus text exposition, one metric family at a time.
#[derive(Default)]
pub(crate) struct Exposition(pub(crate) String);

impl Exposition {
    pub(crate) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample line, written as given (after its family's head).
    pub(crate) fn line(&mut self, sample: std::fmt::Arguments<'_>) {
        let _ = writeln!(self.0, "{sample}");
    }

    /// A family with one unlabelled sample.
    pub(crate) fn single(&mut self, name: &str, kind: &str, help: &str, v: impl std::fmt::Display) {
        self.family(name, kind, help);
        let _ = writeln!(self.0, "{name} {v}");
    }

    /// A family with one sample per value of label `key`.
    pub(crate) fn labelled<L: AsRef<str>, V: std::fmt::Display>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        key: &str,
        samples: impl IntoIterator<Item = (L, V)>,
    ) {
        self.family(name, kind, help);
        for (label, v) in samples {
            let _ = writeln!(
                self.0,
                "{name}{{{key}=\"{}\"}} {v}",
                escape_label(label.as_ref())
            );
        }
    }
}

/// A label value escaped for the exposition format.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
