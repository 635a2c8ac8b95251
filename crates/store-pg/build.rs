//! Rebuilds this crate when a migration is added or changed:
//! `embed_migrations!` reads `../../migrations` at compile time, and cargo
//! does not otherwise know to look there (diesel_migrations' documentation
//! asks for this line). Without it an incremental build kept the old set of
//! migrations after a new folder was added.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations");
}
