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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_start_with_a_letter_or_digit() {
        assert!(valid_name("ns-1.a_b") && valid_name("7") && valid_name(&"a".repeat(64)));
        assert!(!valid_name("-x") && !valid_name("a b") && !valid_name(""));
        assert!(!valid_name(&"a".repeat(65)));
    }
}
