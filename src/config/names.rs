//! Names of things in the configuration and in requests: ids, namespaces, endpoint keys.

/// Whether `name` is a valid id, namespace or key: 1 to 64 letters, digits, `-`, `_`, `.`,
/// starting with a letter or digit.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
