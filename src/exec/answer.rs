//! What an executor keeps of a target's answer: at most `queue.result_max_bytes`, cut on a
//! character boundary, or the bytes in base64 when the answer is not UTF-8, with the
//! [`ResultForm`] saying which.

use std::io::Read;

use base64::Engine;

use crate::queue::ResultForm;

/// `text` cut to at most `max` bytes on a character boundary.
pub fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Reads at most `max` bytes of `body`; whether more followed (or the read broke off, which
/// also leaves only part of the answer).
pub fn read_capped(body: impl Read, max: usize) -> (Vec<u8>, bool) {
    let mut bytes = Vec::new();
    let broke_off = body.take(max as u64 + 1).read_to_end(&mut bytes).is_err();
    let longer = bytes.len() > max;
    bytes.truncate(max);
    (bytes, longer || broke_off)
}

/// The result kept of an answer whose first bytes are `bytes` (`partial` when there were more):
/// the text, at most `max` bytes; or, when the bytes are not UTF-8, their base64, itself at
/// most `max` bytes long.
pub fn keep(bytes: Vec<u8>, partial: bool, max: usize) -> (String, ResultForm) {
    let text = match String::from_utf8(bytes) {
        Ok(text) => Ok(text),
        // A character split by the cut is not a sign of a binary answer: drop its start.
        Err(e) if partial && e.utf8_error().error_len().is_none() => {
            let valid = e.utf8_error().valid_up_to();
            let mut bytes = e.into_bytes();
            bytes.truncate(valid);
            String::from_utf8(bytes).map_err(|e| e.into_bytes())
        }
        Err(e) => Err(e.into_bytes()),
    };
    match text {
        Ok(text) => {
            let kept = cut(&text, max);
            let truncated = partial || kept.len() < text.len();
            (
                kept,
                ResultForm {
                    truncated,
                    base64: false,
                },
            )
        }
        Err(bytes) => {
            // Base64 takes 4 bytes for every 3.
            let fits = max / 4 * 3;
            let truncated = partial || bytes.len() > fits;
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(&bytes[..bytes.len().min(fits)]);
            (
                encoded,
                ResultForm {
                    truncated,
                    base64: true,
                },
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_answer_keeps_its_first_bytes_on_a_character_boundary() {
        let (bytes, partial) = read_capped("aé and more".as_bytes(), 2);
        assert_eq!((bytes.as_slice(), partial), (&b"a\xc3"[..], true));
        let (text, form) = keep(bytes, partial, 2);
        assert_eq!(text, "a");
        assert!(form.truncated && !form.base64);

        let (bytes, partial) = read_capped(&b"short"[..], 5);
        assert_eq!(
            keep(bytes, partial, 5),
            ("short".to_string(), ResultForm::default())
        );
    }

    #[test]
    fn a_binary_answer_is_kept_as_base64_within_the_limit() {
        let (text, form) = keep(vec![0xff, 0x00, 0xfe], false, 100);
        assert_eq!(text, "/wD+");
        assert!(form.base64 && !form.truncated);
        let (text, form) = keep(vec![0xff; 10], false, 8);
        assert_eq!(text, "////////");
        assert!(form.base64 && form.truncated);
    }
}
