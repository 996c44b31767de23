//! Record encoding: one version byte followed by the postcard body.
//!
//! postcard is not self-describing, so a record type never reorders or drops fields; a change
//! of shape is a new version whose decoder upgrades the old one.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::StoreError;

/// A type stored as a versioned record.
pub trait Record: Serialize + DeserializeOwned {
    /// The version written by [`encode`].
    const VERSION: u8;

    /// Decodes a body written with `version`; the default accepts only [`Self::VERSION`].
    /// Types with older versions override this to decode and upgrade them.
    fn decode_versioned(version: u8, body: &[u8]) -> Result<Self, String> {
        if version == Self::VERSION {
            postcard::from_bytes(body).map_err(|e| e.to_string())
        } else {
            Err(format!(
                "unknown record version {version} (this keel writes version {})",
                Self::VERSION
            ))
        }
    }
}

/// Encodes a record as `[version][postcard]`.
pub fn encode<T: Record>(record: &T) -> Vec<u8> {
    let mut out = vec![T::VERSION];
    // Serializing plain data into a Vec cannot fail for the types keel stores.
    postcard::to_io(record, &mut out).expect("postcard serialization into a Vec");
    out
}

/// Decodes a record read from `table` at `key`; a bad record is an error naming both.
pub fn decode<T: Record>(
    table: &str,
    key: impl std::fmt::Display,
    bytes: &[u8],
) -> Result<T, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        table: table.to_string(),
        key: key.to_string(),
        reason,
    };
    let (&version, body) = bytes
        .split_first()
        .ok_or_else(|| corrupt("empty record".into()))?;
    T::decode_versioned(version, body).map_err(corrupt)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Sample {
        a: u64,
        b: String,
    }

    impl Record for Sample {
        const VERSION: u8 = 1;
    }

    #[test]
    fn round_trips_with_version_byte() {
        let s = Sample {
            a: 7,
            b: "x".into(),
        };
        let bytes = encode(&s);
        assert_eq!(bytes[0], 1);
        assert_eq!(decode::<Sample>("t", 1, &bytes).unwrap(), s);
    }

    #[test]
    fn bad_records_are_errors_naming_table_and_key() {
        let err = decode::<Sample>("samples_v1", 42, &[]).unwrap_err();
        assert!(err.to_string().contains("samples_v1") && err.to_string().contains("42"));
        let err = decode::<Sample>("samples_v1", 42, &[9, 1, 2]).unwrap_err();
        assert!(
            err.to_string().contains("unknown record version 9"),
            "{err}"
        );
        let err = decode::<Sample>("samples_v1", 42, &[1, 0xff]).unwrap_err();
        assert!(matches!(err, StoreError::Corrupt { .. }));
    }
}
