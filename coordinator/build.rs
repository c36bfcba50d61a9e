//! Rebuilds the crate when a migration is added. `sqlx::migrate!` embeds
//! `migrations/` at compile time, and Cargo only reruns a macro when a file it
//! already knows changes; a new migration file would otherwise leave the binary
//! migrating to the previous schema.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
