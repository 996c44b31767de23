//! Loading: embedded defaults, then the config file, then `KEEL_*` environment variables (see
//! `env`), then the command-line flags; strict parsing whose errors carry the file,
//! line, column and key.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::env::{ENV_PREFIX, apply_env, env_overrides};
use super::{CONFIG_ENV, Config, ConfigError, DEFAULT_CONFIG_TOML};

/// Where a configuration comes from, besides the embedded defaults.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// The config file (`--config`). When `None`, `KEEL_CONFIG` from `env` names it; when that is
    /// unset too, only the embedded defaults are used.
    pub file: Option<PathBuf>,
    /// Environment variables as (name, value); only `KEEL_*` names are looked at.
    pub env: Vec<(String, String)>,
    /// `--listen` override.
    pub listen: Option<SocketAddr>,
    /// `--data-dir` override.
    pub data_dir: Option<PathBuf>,
}

impl LoadOptions {
    /// Options with `file` and the process's `KEEL_*` environment variables (no flag overrides).
    pub fn from_process_env(file: Option<PathBuf>) -> Self {
        let env = std::env::vars_os()
            .filter_map(|(name, value)| {
                let name = name.into_string().ok()?;
                name.starts_with(ENV_PREFIX)
                    .then(|| (name, value.to_string_lossy().into_owned()))
            })
            .collect();
        Self {
            file,
            env,
            ..Self::default()
        }
    }
}

/// Prints variable names only: values may be secrets.
impl fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.env.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("LoadOptions")
            .field("file", &self.file)
            .field("env", &names)
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl Config {
    /// Loads defaults, the file, the environment and the flag overrides in that order, then
    /// validates the result.
    pub fn load(options: &LoadOptions) -> Result<Config, ConfigError> {
        let file = options.file.clone().or_else(|| {
            options
                .env
                .iter()
                .find(|(name, value)| name == CONFIG_ENV && !value.is_empty())
                .map(|(_, value)| PathBuf::from(value))
        });
        let (mut raw, mut config) = match &file {
            Some(path) => {
                let text = read_config_file(path)?;
                parse_config_text(&text, &path.display().to_string())?
            }
            None => parse_config_text(DEFAULT_CONFIG_TOML, "<embedded keel.toml>")?,
        };

        for var in env_overrides(&options.env)? {
            config = apply_env(&mut raw, &config, &var)?;
        }

        if let Some(listen) = options.listen {
            config.server.listen = listen;
        }
        if let Some(data_dir) = &options.data_dir {
            config.data_dir = data_dir.clone();
        }

        config.validate()?;
        Ok(config)
    }
}

fn read_config_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ConfigError::FileNotFound {
                path: path.to_owned(),
            }
        } else {
            ConfigError::FileUnreadable {
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// Parses config text into both its raw table (the layer the environment is applied to) and the
/// typed config. Errors carry `origin:line:column` and the key path.
pub(super) fn parse_config_text(
    text: &str,
    origin: &str,
) -> Result<(toml::Table, Config), ConfigError> {
    let parse_error = |err: toml::de::Error| {
        let mut message = err.message().trim().to_owned();
        let mut location = origin.to_owned();
        if let Some(span) = err.span() {
            let (line, column) = line_column(text, span.start);
            location = format!("{origin}:{line}:{column}");
            if let Some(key) = key_path_at(text, span.start) {
                message = format!("{key}: {message}");
            }
        }
        ConfigError::Parse { location, message }
    };
    let config: Config = toml::from_str(text).map_err(parse_error)?;
    let raw: toml::Table = text.parse().map_err(parse_error)?;
    Ok((raw, config))
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The dotted path of the key whose name or value covers `offset`, if any.
fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let (doc, _) = toml::de::DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    find_key(doc.get_ref(), offset, &mut path).then(|| path.join("."))
}

fn find_key(table: &toml::de::DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        if key.span().contains(&offset) {
            return true;
        }
        let found = match value.get_ref() {
            toml::de::DeValue::Table(inner) => find_key(inner, offset, path),
            toml::de::DeValue::Array(items) => {
                items
                    .iter()
                    .enumerate()
                    .any(|(i, item)| match item.get_ref() {
                        toml::de::DeValue::Table(inner) => {
                            path.push(i.to_string());
                            let found = find_key(inner, offset, path);
                            if !found {
                                path.pop();
                            }
                            found
                        }
                        _ => false,
                    })
                    || value.span().contains(&offset)
            }
            _ => value.span().contains(&offset),
        };
        if found {
            return true;
        }
        path.pop();
    }
    false
}
