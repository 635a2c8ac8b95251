//! The election definition of the demo's simulated night: the parties,
//! cities and ballot boxes election-loadgen uses (tools/loadgen/src/lib.rs:
//! parties party-00.., cities city-0000.., box i in city i % cities), with
//! each city expecting exactly the boxes loadgen sends it, so percent
//! reporting climbs to 100%.
//!
//! Generated rather than a registry of boxes: 20,000 box ids would add
//! ~300 KB to the repository for no extra demo value. The default sizes are
//! checked in as `demo/demo-night.toml` (a test below keeps it equal to what
//! this writes); `cargo xtask demo` generates other sizes on the fly.
//!
//! ```text
//! cargo xtask demo-definition [BOXES] [CITIES] [PARTIES] > demo/demo-night.toml
//! ```

use std::fmt::Write as _;

/// Party names and colours, reused in turn past the tenth party.
const PARTIES: [(&str, &str); 10] = [
    ("Harbour Party", "#e4003b"),
    ("Civic Alliance", "#0087dc"),
    ("Green Future", "#02a95b"),
    ("Workers League", "#faa61a"),
    ("Liberal Union", "#a855f7"),
    ("Rural Movement", "#12b6cf"),
    ("Unity List", "#f472b6"),
    ("Reform Bloc", "#84cc16"),
    ("Northern Voice", "#fb923c"),
    ("Independent Slate", "#94a3b8"),
];

/// The night's sizes, as election-loadgen takes them.
#[derive(clap::Args, Clone, Copy, Debug)]
pub struct Sizes {
    /// Ballot boxes.
    #[arg(default_value_t = 20_000)]
    pub boxes: u64,
    /// Cities (box i is in city i % cities).
    #[arg(default_value_t = 300)]
    pub cities: u64,
    /// Parties.
    #[arg(default_value_t = 6)]
    pub parties: u64,
}

/// The definition, as TOML (`ingest election load` reads it).
pub fn generate(sizes: &Sizes) -> String {
    let Sizes {
        boxes,
        cities,
        parties,
    } = *sizes;
    let mut toml = String::new();
    // Writing to a String cannot fail.
    let mut line = |text: String| {
        toml.push_str(&text);
        toml.push('\n');
    };
    line("# The demo's simulated election night (just demo), written by".to_owned());
    line(format!(
        "# cargo xtask demo-definition {boxes} {cities} {parties}."
    ));
    line("id = \"demo-night\"".to_owned());
    line("name = \"Demo election night\"".to_owned());
    for party_idx in 0..parties {
        // `usize` from `u64 % 10` cannot overflow.
        let (name, colour) = PARTIES[(party_idx % 10) as usize];
        let mut full_name = name.to_owned();
        if party_idx >= 10 {
            let _ = write!(full_name, " {}", party_idx / 10 + 1);
        }
        line(String::new());
        line("[[parties]]".to_owned());
        line(format!("id = \"party-{party_idx:02}\""));
        line(format!("name = \"{full_name}\""));
        line(format!("colour = \"{colour}\""));
    }
    for city_idx in 0..cities {
        let expected = boxes / cities + u64::from(city_idx < boxes % cities);
        if expected == 0 {
            continue;
        }
        line(String::new());
        line("[[cities]]".to_owned());
        line(format!("id = \"city-{city_idx:04}\""));
        line(format!("name = \"City {city_idx}\""));
        line(format!("expected_ballot_boxes = {expected}"));
    }
    toml
}

#[cfg(test)]
mod tests {
    use super::{Sizes, generate};

    #[test]
    fn the_checked_in_demo_definition_is_what_demo_definition_writes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let checked_in = std::fs::read_to_string(root.join("demo/demo-night.toml")).unwrap();
        let generated = generate(&Sizes {
            boxes: 20_000,
            cities: 300,
            parties: 6,
        });
        assert_eq!(
            generated, checked_in,
            "demo/demo-night.toml differs from `cargo xtask demo-definition`'s output: regenerate it"
        );
    }

    #[test]
    fn every_box_is_expected_by_exactly_one_city_and_names_repeat_with_a_number() {
        let toml = generate(&Sizes {
            boxes: 25,
            cities: 30,
            parties: 12,
        });
        let expected: u64 = toml
            .lines()
            .filter_map(|line| line.strip_prefix("expected_ballot_boxes = "))
            .map(|n| n.parse::<u64>().unwrap())
            .sum();
        assert_eq!(expected, 25);
        // Cities that would get no box are left out.
        assert_eq!(toml.matches("[[cities]]").count(), 25);
        assert!(
            toml.contains("id = \"party-11\"\nname = \"Civic Alliance 2\"\ncolour = \"#0087dc\"")
        );
    }
}
