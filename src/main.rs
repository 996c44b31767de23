//! keel binary.
fn main() {}
