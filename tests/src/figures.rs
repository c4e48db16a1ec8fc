//! The resilience suite's figures: each case appends what it measured to one file
//! (`CASE<TAB>FIGURE<TAB>VALUE` lines), and `cargo xtask resilience` turns the file into
//! `docs/resilience.md`.

use std::fmt::Display;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

/// The environment variable naming the figures file.
pub const FIGURES_ENV: &str = "POSTERN_FIGURES";

/// The figure under which a case describes itself, in one sentence.
const ABOUT: &str = "about";

/// What one case measured, in the order measured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    pub case: String,
    pub about: String,
    pub rows: Vec<(String, String)>,
}

impl Figures {
    pub fn new(case: &str, about: &str) -> Figures {
        Figures {
            case: case.to_string(),
            about: about.to_string(),
            rows: Vec::new(),
        }
    }

    /// Adds one figure; tabs and newlines in it become spaces.
    pub fn add(&mut self, figure: &str, value: impl Display) -> &mut Figures {
        self.rows
            .push((one_line(figure), one_line(&value.to_string())));
        self
    }

    /// Appends the figures to `path` in one write, so cases running at once do not interleave;
    /// also prints them, for a reader of the test's output.
    pub fn append_to(&self, path: &Path) -> Result<()> {
        let mut text = format!("{}\t{ABOUT}\t{}\n", self.case, one_line(&self.about));
        for (figure, value) in &self.rows {
            text += &format!("{}\t{figure}\t{value}\n", self.case);
        }
        print!("{text}");
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", path.display()))
    }

    /// Reads a figures file back, one [`Figures`] per case, in the order first written.
    pub fn read_all(path: &Path) -> Result<Vec<Figures>> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut cases: Vec<Figures> = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let mut fields = line.splitn(3, '\t');
            let (Some(case), Some(figure), Some(value)) =
                (fields.next(), fields.next(), fields.next())
            else {
                anyhow::bail!(
                    "{}:{}: expected CASE<TAB>FIGURE<TAB>VALUE, got {line:?}",
                    path.display(),
                    number + 1
                );
            };
            let index = match cases.iter().position(|c| c.case == case) {
                Some(index) => index,
                None => {
                    cases.push(Figures::new(case, ""));
                    cases.len() - 1
                }
            };
            if figure == ABOUT {
                cases[index].about = value.to_string();
            } else {
                cases[index].add(figure, value);
            }
        }
        Ok(cases)
    }

    /// A Markdown section: the case as a heading, its description, a table of its figures.
    pub fn markdown(&self) -> String {
        let mut out = format!(
            "### {}\n\n{}\n\n| figure | value |\n|---|---|\n",
            self.case, self.about
        );
        for (figure, value) in &self.rows {
            out += &format!(
                "| {} | {} |\n",
                figure.replace('|', "\\|"),
                value.replace('|', "\\|")
            );
        }
        out
    }
}

fn one_line(text: &str) -> String {
    text.replace(['\t', '\n'], " ")
}

/// The median and the 99th percentile of `samples` (nearest rank), or `None` if empty.
pub fn median_and_p99(
    samples: &[std::time::Duration],
) -> Option<(std::time::Duration, std::time::Duration)> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = |q: f64| {
        let index = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    };
    (!sorted.is_empty()).then(|| (rank(0.5), rank(0.99)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn figures_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("figures.tsv");
        let mut first = Figures::new("hostile", "Garbage\tat the port.");
        first.add("inputs", 2000).add("crashes", 0);
        first.append_to(&path).unwrap();
        Figures::new("scan", "sslscan.").append_to(&path).unwrap();
        let read = Figures::read_all(&path).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(read[0].about, "Garbage at the port.");
        assert_eq!(
            read[0].rows,
            vec![
                ("inputs".into(), "2000".into()),
                ("crashes".into(), "0".into())
            ]
        );
        assert!(read[0].markdown().contains("| inputs | 2000 |\n"));
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(
            median_and_p99(&samples),
            Some((Duration::from_millis(50), Duration::from_millis(99)))
        );
        assert_eq!(median_and_p99(&[]), None);
    }
}
