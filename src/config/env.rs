//! The environment layer: `KEEL_<SECTION>__<KEY>` variables (`__` nests), `_FILE` variables
//! read from a file (for secrets, which are never echoed in errors), each value read with the
//! type its key has.

use super::{Config, ConfigError, RESERVED_ENV};

/// Prefix of keel's variables.
pub(super) const ENV_PREFIX: &str = "KEEL_";
/// Suffix of variables whose value is read from the file they name.
const FILE_SUFFIX: &str = "_FILE";

/// One `KEEL_*` variable resolved to a key path and its text value.
pub(super) struct EnvOverride {
    /// The variable as set (including any `_FILE` suffix), for error messages.
    var: String,
    /// Key path, e.g. `["server", "listen"]`.
    path: Vec<String>,
    /// The value (the file's content for `_FILE` variables).
    value: String,
    /// Whether the value came from a file (and so may be a secret to keep out of errors).
    from_file: bool,
}

/// Selects the config variables from `env`, sorted by name, reading `_FILE` values.
pub(super) fn env_overrides(env: &[(String, String)]) -> Result<Vec<EnvOverride>, ConfigError> {
    let mut vars: Vec<&(String, String)> = env
        .iter()
        .filter(|(name, _)| name.starts_with(ENV_PREFIX) && !RESERVED_ENV.contains(&name.as_str()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));

    let env_error = |var: &str, message: String| ConfigError::Env {
        var: var.to_owned(),
        message,
    };
    let mut overrides = Vec::with_capacity(vars.len());
    for (name, value) in vars {
        let rest = &name[ENV_PREFIX.len()..];
        let (key, from_file) = match rest.strip_suffix(FILE_SUFFIX) {
            Some(key) => (key, true),
            None => (rest, false),
        };
        if from_file {
            let plain = format!("{ENV_PREFIX}{key}");
            if env.iter().any(|(other, _)| *other == plain) {
                return Err(env_error(
                    name,
                    format!("{plain} is set too; set only one of them"),
                ));
            }
        }
        let key = key.to_ascii_lowercase();
        let path: Vec<String> = key.split("__").map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(env_error(
                name,
                "not a config key: expected KEEL_<KEY> or KEEL_<SECTION>__<KEY>".to_owned(),
            ));
        }
        let value = if from_file {
            let text = std::fs::read_to_string(value)
                .map_err(|e| env_error(name, format!("cannot read {value}: {e}")))?;
            let trimmed = text.strip_suffix('\n').unwrap_or(&text);
            trimmed.strip_suffix('\r').unwrap_or(trimmed).to_owned()
        } else {
            value.clone()
        };
        overrides.push(EnvOverride {
            var: name.clone(),
            path,
            value,
            from_file,
        });
    }
    Ok(overrides)
}

/// Sets one variable's value in `raw` and re-reads the config from it. The value's TOML type is
/// chosen by the type the key has now; several readings are tried and the first that fits wins.
pub(super) fn apply_env(
    raw: &mut toml::Table,
    current: &Config,
    var: &EnvOverride,
) -> Result<Config, ConfigError> {
    let env_error = |message: String| {
        let message = if var.from_file {
            hide_value(&message, &var.value)
        } else {
            message
        };
        ConfigError::Env {
            var: var.var.clone(),
            message: format!("{}: {message}", var.path.join(".")),
        }
    };

    let typed = toml::Table::try_from(current).ok();
    let hint = typed.as_ref().and_then(|t| lookup(t, &var.path));
    let mut first_error = None;
    for candidate in env_value_candidates(&var.value, hint) {
        let mut next = raw.clone();
        set_path(&mut next, &var.path, candidate).map_err(env_error)?;
        match toml::Value::Table(next.clone()).try_into::<Config>() {
            Ok(config) => {
                *raw = next;
                return Ok(config);
            }
            Err(e) => {
                first_error.get_or_insert_with(|| e.message().trim().to_owned());
            }
        }
    }
    let mut message = first_error.unwrap_or_else(|| "cannot be applied".to_owned());
    if let Some(toml::Value::Table(_)) = hint {
        message.push_str(&format!(
            " (`{}` is a section: set its keys with {}__<KEY>)",
            var.path.join("."),
            var.var
        ));
    }
    Err(env_error(message))
}

/// Removes a value read from a file (possibly a secret) from an error message, in the forms serde
/// quotes values in, and anywhere when it is long enough not to be mistaken for other text.
fn hide_value(message: &str, value: &str) -> String {
    const HIDDEN: &str = "<file content>";
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return message.to_owned();
    }
    let mut message = message
        .replace(&format!("{value:?}"), HIDDEN)
        .replace(&format!("`{trimmed}`"), HIDDEN);
    if trimmed.len() >= 6 {
        message = message.replace(trimmed, HIDDEN);
    }
    message
}

fn lookup<'a>(table: &'a toml::Table, path: &[String]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut table = table;
    for key in parents {
        table = table.get(key)?.as_table()?;
    }
    table.get(last)
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    let Some((last, parents)) = path.split_last() else {
        return Err("empty key".to_owned());
    };
    let mut table = table;
    for (i, key) in parents.iter().enumerate() {
        let entry = table
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = match entry {
            toml::Value::Table(inner) => inner,
            _ => return Err(format!("`{}` is not a section", path[..=i].join("."))),
        };
    }
    table.insert(last.clone(), value);
    Ok(())
}

/// Readings of an environment value, best first, given the key's current value (`hint`).
fn env_value_candidates(value: &str, hint: Option<&toml::Value>) -> Vec<toml::Value> {
    use toml::Value;
    let string = || Value::String(value.to_owned());
    let parsed = || value.trim().parse::<Value>().ok();
    let comma_list = |typed: bool| {
        let items = value
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(|item| match item.parse::<Value>() {
                Ok(v) if typed && !v.is_table() && !v.is_array() => v,
                _ => Value::String(item.to_owned()),
            })
            .collect();
        Value::Array(items)
    };
    match hint {
        Some(Value::String(_)) => vec![string()],
        Some(Value::Array(items)) => {
            let mut out = Vec::new();
            if value.trim_start().starts_with('[')
                && let Some(v @ Value::Array(_)) = parsed()
            {
                out.push(v);
            }
            match items.first() {
                Some(Value::String(_)) => out.push(comma_list(false)),
                Some(_) => out.push(comma_list(true)),
                None => {
                    out.push(comma_list(false));
                    out.push(comma_list(true));
                }
            }
            out
        }
        Some(Value::Table(_)) => parsed().into_iter().chain([string()]).collect(),
        Some(_) => parsed().into_iter().chain([string()]).collect(),
        None => [string()]
            .into_iter()
            .chain(parsed())
            .chain([comma_list(false), comma_list(true)])
            .collect(),
    }
}
