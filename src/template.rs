//! Payload templates of workflow steps: the placeholders in their string values
//! (`{{payload}}`, `{{payload.<field>[.<field>…]}}`, `{{steps.<name>.result}}`) and where each
//! string splits into text and placeholders. Configuration checks templates with it, the
//! workflow executor fills them.

use serde_json::Value;

/// A placeholder of a payload template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placeholder {
    /// `{{payload}}` (empty path) or `{{payload.a.b}}`.
    Payload(Vec<String>),
    /// `{{steps.<name>.result}}`.
    StepResult(String),
}

/// A part of a template string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Text as it is.
    Text(&'a str),
    /// A placeholder.
    Hole(Placeholder),
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
}

fn parse_placeholder(inner: &str) -> Result<Placeholder, String> {
    let inner = inner.trim();
    let unknown = || {
        format!(
            "unknown placeholder {{{{{inner}}}}}: use {{{{payload}}}}, {{{{payload.<field>}}}} or {{{{steps.<name>.result}}}}"
        )
    };
    if inner == "payload" {
        return Ok(Placeholder::Payload(Vec::new()));
    }
    if let Some(path) = inner.strip_prefix("payload.") {
        let fields: Vec<String> = path.split('.').map(str::to_string).collect();
        if fields.iter().all(|f| is_name(f)) {
            return Ok(Placeholder::Payload(fields));
        }
        return Err(unknown());
    }
    if let Some(name) = inner
        .strip_prefix("steps.")
        .and_then(|rest| rest.strip_suffix(".result"))
        && is_name(name)
    {
        return Ok(Placeholder::StepResult(name.to_string()));
    }
    Err(unknown())
}

/// Splits a template string into text and placeholders.
pub fn pieces(text: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            out.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after
            .find("}}")
            .ok_or_else(|| format!("unclosed `{{{{` in {text:?}"))?;
        out.push(Piece::Hole(parse_placeholder(&after[..close])?));
        rest = &after[close + 2..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest));
    }
    Ok(out)
}

fn walk_strings<'a>(
    value: &'a Value,
    visit: &mut dyn FnMut(&'a str) -> Result<(), String>,
) -> Result<(), String> {
    match value {
        Value::String(s) => visit(s),
        Value::Array(items) => items.iter().try_for_each(|v| walk_strings(v, visit)),
        Value::Object(map) => {
            for (key, v) in map {
                if key.contains("{{") {
                    return Err(format!(
                        "placeholders are substituted in string values only, not in the key {key:?}"
                    ));
                }
                walk_strings(v, visit)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Every placeholder of a payload template, or what is wrong with it.
pub fn template_placeholders(template: &Value) -> Result<Vec<Placeholder>, String> {
    let mut found = Vec::new();
    walk_strings(template, &mut |s| {
        for piece in pieces(s)? {
            if let Piece::Hole(h) = piece {
                found.push(h);
            }
        }
        Ok(())
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_split_into_text_and_placeholders() {
        assert_eq!(
            pieces("a {{payload.x}} b {{steps.s-1.result}}").unwrap(),
            vec![
                Piece::Text("a "),
                Piece::Hole(Placeholder::Payload(vec!["x".into()])),
                Piece::Text(" b "),
                Piece::Hole(Placeholder::StepResult("s-1".into())),
            ]
        );
        assert_eq!(pieces("plain").unwrap(), vec![Piece::Text("plain")]);
        assert!(
            pieces("{{payload.a b}}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert_eq!(
            template_placeholders(&json!({"k": ["{{payload}}", 1, {"n": "{{payload.n}}"}]}))
                .unwrap(),
            vec![
                Placeholder::Payload(vec![]),
                Placeholder::Payload(vec!["n".into()])
            ]
        );
    }
}
