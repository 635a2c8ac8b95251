//! The bench's one result table: measurement, result, target, and whether
//! the target is met. The bench reports; it never fails on a missed target
//! (timing on a shared machine is not a test), only on errors.

use std::time::Duration;

/// One line of the table.
pub struct Line {
    pub what: String,
    pub result: String,
    /// The target, if the measurement has one.
    pub target: Option<Target>,
}

/// A target and whether the result meets it.
pub struct Target {
    pub text: String,
    pub met: bool,
}

impl Line {
    /// A measurement without a target.
    pub fn info(what: impl Into<String>, result: impl Into<String>) -> Line {
        Line {
            what: what.into(),
            result: result.into(),
            target: None,
        }
    }

    /// A measurement with a target.
    pub fn judged(
        what: impl Into<String>,
        result: impl Into<String>,
        target: impl Into<String>,
        met: bool,
    ) -> Line {
        Line {
            what: what.into(),
            result: result.into(),
            target: Some(Target {
                text: target.into(),
                met,
            }),
        }
    }
}

/// Prints the table in Markdown.
pub fn print(lines: &[Line]) {
    println!();
    println!("| measurement | result | target | met |");
    println!("| --- | --- | --- | --- |");
    for line in lines {
        let (target, met) = match &line.target {
            Some(target) => (
                target.text.as_str(),
                if target.met { "met" } else { "NOT MET" },
            ),
            None => ("", ""),
        };
        println!("| {} | {} | {target} | {met} |", line.what, line.result);
    }
}

/// `1234567.8` as `1,234,568`.
pub fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.abs());
    let mut grouped = String::with_capacity(digits.len() + digits.len() / 3);
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    if value < 0.0 && digits != "0" {
        grouped.insert(0, '-');
    }
    grouped
}

/// Milliseconds, for latencies.
pub fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// KiB as `12.3 MiB`, or `?` when unknown.
pub fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(
        || "?".to_owned(),
        |kib| format!("{:.1} MiB", kib as f64 / 1024.0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1_234_567.8), "1,234,568");
        assert_eq!(thousands(-12_345.0), "-12,345");
    }

    #[test]
    fn memory_is_shown_in_mib() {
        assert_eq!(mib(Some(2048)), "2.0 MiB");
        assert_eq!(mib(None), "?");
    }
}
