//! Rebuild when a migration is added: `embed_migrations!` reads the migration
//! directories at compile time, and Cargo tracks only the files it included, not a new
//! directory beside them.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
