//! The secret string type of the configuration: it prints as `***` everywhere (`Debug`,
//! `Display`, `Serialize`), and reading it never echoes a rejected value; and [`redact_url`],
//! the one way a URL that may carry a secret is shown or logged.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a secret prints as.
pub const REDACTED: &str = "***";

/// A secret string. `Debug`, `Display` and `Serialize` all give `***`, so it cannot reach a log
/// or printed config; use [`Secret::expose`] where the value is really needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(SecretVisitor)
    }
}

/// Accepts only strings, and never echoes a rejected value in its error.
struct SecretVisitor;

impl SecretVisitor {
    fn reject<E: serde::de::Error>(&self, kind: &'static str) -> Result<Secret, E> {
        Err(E::invalid_type(serde::de::Unexpected::Other(kind), self))
    }
}

impl serde::de::Visitor<'_> for SecretVisitor {
    type Value = Secret;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a secret string")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Secret, E> {
        Ok(Secret::new(v))
    }

    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Secret, E> {
        Ok(Secret(v))
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
        self.reject("a boolean")
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
        self.reject("an integer")
    }

    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
        self.reject("an integer")
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
        self.reject("a float")
    }

    fn visit_char<E: serde::de::Error>(self, v: char) -> Result<Secret, E> {
        Ok(Secret(v.to_string()))
    }

    fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Secret, E> {
        self.reject("bytes")
    }
}

impl Secret {
    /// Whether the value is the redaction placeholder itself (copied from printed output).
    pub fn is_redaction(&self) -> bool {
        self.0 == REDACTED
    }
}
/// `url` fit to show or log: userinfo becomes `***@`, every query value and a fragment `***`
/// (webhook URLs often carry their token there). Scheme, host, port and path stay.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((_, host)) => format!("{REDACTED}@{host}"),
        None => authority.to_string(),
    };
    let (tail, fragment) = match tail.split_once('#') {
        Some((tail, _)) => (tail, format!("#{REDACTED}")),
        None => (tail, String::new()),
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) => format!("{name}={REDACTED}"),
                    None if pair.is_empty() => String::new(),
                    None => REDACTED.to_string(),
                })
                .collect();
            format!("{path}?{}", pairs.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{authority}{tail}{fragment}")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn userinfo_query_values_and_fragments_are_redacted() {
        assert_eq!(
            redact_url("https://user:pass@hooks.example.com:8443/a/b?token=s3cret&x=1&flag#frag"),
            "https://***@hooks.example.com:8443/a/b?token=***&x=***&***#***"
        );
        assert_eq!(
            redact_url("http://example.com/path"),
            "http://example.com/path"
        );
        assert_eq!(
            redact_url("https://a@b@example.com?k="),
            "https://***@example.com?k=***"
        );
    }
}
