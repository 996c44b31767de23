//! Loading and validating whole configurations: defaults, file, environment, flags.

use super::server::check_origin;
use super::*;
use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn with_env(vars: &[(&str, &str)]) -> LoadOptions {
    LoadOptions {
        env: env(vars),
        ..LoadOptions::default()
    }
}

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temp file");
    file.write_all(text.as_bytes()).expect("write temp file");
    file
}

fn with_file(file: &tempfile::NamedTempFile) -> LoadOptions {
    LoadOptions {
        file: Some(file.path().to_owned()),
        ..LoadOptions::default()
    }
}

fn load_err(options: &LoadOptions) -> String {
    Config::load(options)
        .expect_err("load should fail")
        .to_string()
}

/// Dotted paths of every leaf value in a table.
fn leaf_keys(table: &toml::Table, prefix: &str, out: &mut BTreeSet<String>) {
    for (key, value) in table {
        let path = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => leaf_keys(inner, &path, out),
            _ => {
                out.insert(path);
            }
        }
    }
}

/// Optional keys shown commented out in the default file.
const COMMENTED_KEYS: &[&str] = &["auth.key_hash_secret"];

#[test]
fn embedded_file_equals_defaults() {
    let config: Config = toml::from_str(DEFAULT_CONFIG_TOML).expect("embedded file parses");
    assert_eq!(config, Config::default());
    assert_eq!(
        Config::load(&LoadOptions::default()).expect("defaults load"),
        Config::default()
    );
    Config::default().validate().expect("defaults are valid");
}

#[test]
fn embedded_file_lists_every_key() {
    let file: toml::Table = DEFAULT_CONFIG_TOML.parse().expect("embedded file parses");
    let mut file_keys = BTreeSet::new();
    leaf_keys(&file, "", &mut file_keys);

    // Every optional key is set here, so the serialized config has every key there is.
    let mut full = Config::default();
    full.auth.key_hash_secret = Some(Secret::new("x"));
    let table = toml::Table::try_from(&full).expect("config serializes");
    let mut code_keys = BTreeSet::new();
    leaf_keys(&table, "", &mut code_keys);

    let mut expected = file_keys.clone();
    for key in COMMENTED_KEYS {
        assert!(!file_keys.contains(*key), "{key} should be commented out");
        expected.insert((*key).to_owned());
    }
    assert_eq!(expected, code_keys, "packaging/keel.toml and Config differ");

    // The commented keys really are in the file, as `# key = ...`.
    for key in COMMENTED_KEYS {
        let name = key.rsplit('.').next().expect("key name");
        assert!(
            DEFAULT_CONFIG_TOML
                .lines()
                .any(|l| l.starts_with(&format!("# {name} = "))),
            "{key} is missing from the file"
        );
    }
}

#[test]
fn embedded_file_comments_every_key_and_section() {
    let lines: Vec<&str> = DEFAULT_CONFIG_TOML.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        assert!(
            i > 0 && lines[i - 1].trim_start().starts_with('#'),
            "line {} has no comment above it: {line}",
            i + 1
        );
    }
}

#[test]
fn file_values_override_defaults() {
    let file = config_file("data_dir = \"/var/lib/keel\"\n[store]\nmax_batch = 7\n");
    let config = Config::load(&with_file(&file)).expect("loads");
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/keel"));
    assert_eq!(config.store.max_batch, 7);
    assert_eq!(config.server, ServerConfig::default());
    assert_eq!(
        config.database_path(),
        PathBuf::from("/var/lib/keel/keel.redb")
    );
}

#[test]
fn unknown_key_in_file_names_key_and_line() {
    let file = config_file("# comment\n[server]\nlisen = \"0.0.0.0:1\"\n");
    let err = load_err(&with_file(&file));
    let path = file.path().display().to_string();
    assert!(err.starts_with(&format!("{path}:3:1: ")), "{err}");
    assert!(err.contains("server.lisen"), "{err}");
    assert!(err.contains("unknown field `lisen`"), "{err}");
    assert!(err.contains("`listen`"), "suggests the known keys: {err}");
    assert!(!err.contains('\n'), "one line: {err}");
}

#[test]
fn unknown_section_in_file_is_an_error() {
    let file = config_file("data_dir = \"x\"\n\n[servr]\nlisten = \"0.0.0.0:1\"\n");
    let err = load_err(&with_file(&file));
    assert!(err.contains(":3:"), "{err}");
    assert!(err.contains("unknown field `servr`"), "{err}");
}

#[test]
fn bad_type_in_file_names_key_and_line() {
    let file = config_file("[server]\nlisten = \"127.0.0.1:1\"\nmax_body_bytes = \"big\"\n");
    let err = load_err(&with_file(&file));
    assert!(err.contains(":3:18: "), "{err}");
    assert!(err.contains("server.max_body_bytes"), "{err}");
    assert!(err.contains("invalid type"), "{err}");

    let file = config_file("[log]\nformat = \"xml\"\n");
    let err = load_err(&with_file(&file));
    assert!(err.contains(":2:10: log.format: "), "{err}");
    assert!(err.contains("`text`") && err.contains("`json`"), "{err}");

    let file = config_file("[server]\nlisten = \"localhost\"\n");
    let err = load_err(&with_file(&file));
    assert!(err.contains(":2:10: server.listen: "), "{err}");
}

#[test]
fn toml_syntax_error_has_location() {
    let file = config_file("[server]\nlisten = \n");
    let err = load_err(&with_file(&file));
    assert!(err.contains(":2:"), "{err}");
}

#[test]
fn missing_named_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nope.toml");
    let options = LoadOptions {
        file: Some(path.clone()),
        ..LoadOptions::default()
    };
    let err = Config::load(&options).expect_err("missing file");
    assert!(matches!(err, ConfigError::FileNotFound { .. }), "{err:?}");
    assert!(err.to_string().contains(&path.display().to_string()));

    // The same through KEEL_CONFIG.
    let path_text = path.display().to_string();
    let err = load_err(&with_env(&[("KEEL_CONFIG", &path_text)]));
    assert!(err.contains(&path_text), "{err}");
}

#[test]
fn keel_config_names_the_file_unless_a_file_is_given() {
    let from_env = config_file("[store]\nmax_batch = 5\n");
    let from_flag = config_file("[store]\nmax_batch = 6\n");
    let env_path = from_env.path().display().to_string();

    let config = Config::load(&with_env(&[("KEEL_CONFIG", &env_path)])).expect("loads");
    assert_eq!(config.store.max_batch, 5);

    let options = LoadOptions {
        file: Some(from_flag.path().to_owned()),
        ..with_env(&[("KEEL_CONFIG", &env_path)])
    };
    assert_eq!(Config::load(&options).expect("loads").store.max_batch, 6);
}

#[test]
fn env_overrides_nested_int_string_and_list() {
    let file = config_file("[store]\nmax_batch = 7\n[log]\nlevel = \"warn\"\n");
    let options = LoadOptions {
        env: env(&[
            ("KEEL_STORE__MAX_BATCH", "512"),
            ("KEEL_LOG__LEVEL", "debug"),
            ("KEEL_LOG__FORMAT", "json"),
            ("KEEL_DATA_DIR", "/srv/keel"),
            ("KEEL_SERVER__LISTEN", "0.0.0.0:9000"),
            (
                "KEEL_SERVER__CORS_ALLOWED_ORIGINS",
                "https://a.example.com, http://b.example.com:8080",
            ),
        ]),
        ..with_file(&file)
    };
    let config = Config::load(&options).expect("loads");
    assert_eq!(config.store.max_batch, 512);
    assert_eq!(config.log.level, "debug");
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.data_dir, PathBuf::from("/srv/keel"));
    assert_eq!(config.server.listen, "0.0.0.0:9000".parse().expect("addr"));
    assert_eq!(
        config.server.cors_allowed_origins,
        ["https://a.example.com", "http://b.example.com:8080"]
    );
}

#[test]
fn env_list_accepts_toml_array_and_empty() {
    let config = Config::load(&with_env(&[(
        "KEEL_SERVER__CORS_ALLOWED_ORIGINS",
        r#"["https://a.example.com", "https://b.example.com"]"#,
    )]))
    .expect("loads");
    assert_eq!(
        config.server.cors_allowed_origins,
        ["https://a.example.com", "https://b.example.com"]
    );

    let file = config_file("[server]\ncors_allowed_origins = [\"https://a.example.com\"]\n");
    let options = LoadOptions {
        env: env(&[("KEEL_SERVER__CORS_ALLOWED_ORIGINS", "")]),
        ..with_file(&file)
    };
    let config = Config::load(&options).expect("loads");
    assert!(config.server.cors_allowed_origins.is_empty());
}

#[test]
fn env_bad_value_names_the_variable() {
    let err = load_err(&with_env(&[("KEEL_STORE__MAX_BATCH", "lots")]));
    assert!(
        err.starts_with("environment variable KEEL_STORE__MAX_BATCH: store.max_batch: "),
        "{err}"
    );
    assert!(err.contains("invalid type"), "{err}");

    let err = load_err(&with_env(&[("KEEL_SERVER__LISTEN", "nowhere")]));
    assert!(err.contains("KEEL_SERVER__LISTEN"), "{err}");
}

#[test]
fn env_unknown_key_names_the_variable() {
    let err = load_err(&with_env(&[("KEEL_SERVER__LISTN", "0.0.0.0:1")]));
    assert!(
        err.starts_with("environment variable KEEL_SERVER__LISTN: "),
        "{err}"
    );
    assert!(err.contains("unknown field `listn`"), "{err}");

    let err = load_err(&with_env(&[("KEEL_QUEUEZ__MAX", "1")]));
    assert!(err.contains("KEEL_QUEUEZ__MAX"), "{err}");
    assert!(err.contains("unknown field `queuez`"), "{err}");

    let err = load_err(&with_env(&[("KEEL_DATA_DIR__X", "1")]));
    assert!(err.contains("KEEL_DATA_DIR__X"), "{err}");
    assert!(err.contains("not a section"), "{err}");

    let err = load_err(&with_env(&[("KEEL_SERVER____LISTEN", "1")]));
    assert!(err.contains("KEEL_SERVER____LISTEN"), "{err}");
}

#[test]
fn env_errors_blame_the_right_variable() {
    let err = load_err(&with_env(&[
        ("KEEL_STORE__MAX_BATCH", "12"),
        ("KEEL_SERVER__BOGUS", "1"),
        ("KEEL_LOG__LEVEL", "debug"),
    ]));
    assert!(err.contains("KEEL_SERVER__BOGUS"), "{err}");
    assert!(!err.contains("KEEL_STORE"), "{err}");
}

#[test]
fn reserved_and_foreign_vars_are_ignored() {
    let config = Config::load(&with_env(&[
        ("KEEL_API_KEY", "kk_secret"),
        ("KEEL_URL", "http://127.0.0.1:8080"),
        ("KEEL_CRASH_AT", "before:cycle_started"),
        ("KEEL_CONFIG", ""),
        ("PATH", "/usr/bin"),
        ("KEELX", "1"),
    ]))
    .expect("loads");
    assert_eq!(config, Config::default());
}

#[test]
fn file_suffix_reads_secret_from_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret_path = dir.path().join("key-hash");
    std::fs::write(&secret_path, "s3cret-value\n").expect("write secret");
    let path_text = secret_path.display().to_string();
    let config = Config::load(&with_env(&[(
        "KEEL_AUTH__KEY_HASH_SECRET_FILE",
        &path_text,
    )]))
    .expect("loads");
    let secret = config.auth.key_hash_secret.as_ref().expect("secret set");
    assert_eq!(secret.expose(), "s3cret-value");

    // A secret set in the environment directly, and one in the file.
    let config =
        Config::load(&with_env(&[("KEEL_AUTH__KEY_HASH_SECRET", "direct")])).expect("loads");
    assert_eq!(
        config.auth.key_hash_secret.map(|s| s.expose().to_owned()),
        Some("direct".to_owned())
    );
    let file = config_file("[auth]\nkey_hash_secret = \"in-file\"\n");
    let config = Config::load(&with_file(&file)).expect("loads");
    assert_eq!(
        config.auth.key_hash_secret.map(|s| s.expose().to_owned()),
        Some("in-file".to_owned())
    );
}

#[test]
fn file_suffix_errors_name_variable_and_path_never_content() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("missing").display().to_string();
    let err = load_err(&with_env(&[("KEEL_AUTH__KEY_HASH_SECRET_FILE", &missing)]));
    assert!(err.contains("KEEL_AUTH__KEY_HASH_SECRET_FILE"), "{err}");
    assert!(err.contains(&missing), "{err}");

    let secret_path = dir.path().join("secret");
    std::fs::write(&secret_path, "hunter2\n").expect("write secret");
    let path_text = secret_path.display().to_string();
    let err = load_err(&with_env(&[("KEEL_STORE__MAX_BATCH_FILE", &path_text)]));
    assert!(err.contains("KEEL_STORE__MAX_BATCH_FILE"), "{err}");
    assert!(!err.contains("hunter2"), "{err}");

    let err = load_err(&with_env(&[
        ("KEEL_AUTH__KEY_HASH_SECRET_FILE", &path_text),
        ("KEEL_AUTH__KEY_HASH_SECRET", "other"),
    ]));
    assert!(err.contains("set only one"), "{err}");
}

#[test]
fn file_suffix_values_are_hidden_in_errors() {
    for content in ["hunter2\n", "7x\n", "-12\n", "a\"b\n"] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("value");
        std::fs::write(&path, content).expect("write value");
        let path_text = path.display().to_string();
        let err = load_err(&with_env(&[("KEEL_STORE__MAX_BATCH_FILE", &path_text)]));
        assert!(err.contains("<file content>"), "{err}");
        assert!(!err.contains(content.trim()), "{content:?}: {err}");
    }
}

#[test]
fn from_process_env_keeps_only_keel_vars() {
    let options = LoadOptions::from_process_env(Some(PathBuf::from("/etc/keel/keel.toml")));
    assert_eq!(options.file, Some(PathBuf::from("/etc/keel/keel.toml")));
    assert!(
        options
            .env
            .iter()
            .all(|(name, _)| name.starts_with("KEEL_"))
    );
    assert_eq!((options.listen, options.data_dir), (None, None));
}

#[test]
fn secret_with_wrong_type_is_not_echoed() {
    let file = config_file("[auth]\nkey_hash_secret = 918273645\n");
    let err = load_err(&with_file(&file));
    assert!(err.contains("auth.key_hash_secret"), "{err}");
    assert!(!err.contains("918273645"), "{err}");
}

#[test]
fn flags_win_over_env_and_file() {
    let file = config_file("data_dir = \"/from/file\"\n[server]\nlisten = \"127.0.0.1:1\"\n");
    let options = LoadOptions {
        env: env(&[
            ("KEEL_SERVER__LISTEN", "127.0.0.1:2"),
            ("KEEL_DATA_DIR", "/from/env"),
        ]),
        listen: Some("127.0.0.1:3".parse().expect("addr")),
        data_dir: Some(PathBuf::from("/from/flag")),
        ..with_file(&file)
    };
    let config = Config::load(&options).expect("loads");
    assert_eq!(config.server.listen.port(), 3);
    assert_eq!(config.data_dir, PathBuf::from("/from/flag"));

    let options = LoadOptions {
        listen: None,
        data_dir: None,
        ..options
    };
    let config = Config::load(&options).expect("loads");
    assert_eq!(config.server.listen.port(), 2);
    assert_eq!(config.data_dir, PathBuf::from("/from/env"));
}

#[test]
fn validation_errors_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "KEEL_STORE__MAX_BATCH",
            "0",
            "store.max_batch: must be between 1 and 65536, got 0",
        ),
        (
            "KEEL_STORE__MAX_BATCH",
            "65537",
            "store.max_batch: must be between 1 and 65536, got 65537",
        ),
        (
            "KEEL_AUDIT__CHECKPOINT_INTERVAL_SECONDS",
            "59",
            "audit.checkpoint_interval_seconds: must be at least 60, got 59",
        ),
        (
            "KEEL_AUDIT__CHECKPOINT_EVERY",
            "0",
            "audit.checkpoint_every:",
        ),
        (
            "KEEL_AUTH__LAST_USED_FLUSH_SECONDS",
            "0",
            "auth.last_used_flush_seconds:",
        ),
        (
            "KEEL_METRICS__SNAPSHOT_INTERVAL_SECONDS",
            "0",
            "metrics.snapshot_interval_seconds:",
        ),
        (
            "KEEL_METRICS__RETENTION_DAYS",
            "3651",
            "metrics.retention_days:",
        ),
        (
            "KEEL_SHUTDOWN__DRAIN_SECONDS",
            "0",
            "shutdown.drain_seconds:",
        ),
        (
            "KEEL_SHUTDOWN__DRAIN_SECONDS",
            "3601",
            "shutdown.drain_seconds:",
        ),
        ("KEEL_LOG__LEVEL", "info,[", "log.level: invalid log filter"),
        ("KEEL_LOG__LEVEL", " ", "log.level: must not be empty"),
        (
            "KEEL_AUTH__KEY_HASH_SECRET",
            "",
            "auth.key_hash_secret: must not be empty",
        ),
        (
            "KEEL_AUTH__KEY_HASH_SECRET",
            "***",
            "auth.key_hash_secret: is the redaction",
        ),
        (
            "KEEL_SERVER__REQUEST_TIMEOUT_SECONDS",
            "0",
            "server.request_timeout_seconds:",
        ),
        ("KEEL_DATA_DIR", "", "data_dir: must not be empty"),
    ];
    for (var, value, expected) in cases {
        let err = load_err(&with_env(&[(var, value)]));
        assert!(err.starts_with(expected), "{var}={value}: {err}");
    }
}

#[test]
fn cors_origins_are_checked() {
    for good in [
        "https://ops.example.com",
        "http://localhost:3000",
        "http://127.0.0.1:8080",
        "https://[::1]:8443",
        "https://[2001:db8::1]",
    ] {
        assert_eq!(check_origin(good), Ok(()), "{good}");
    }
    for bad in [
        "ops.example.com",
        "ftp://ops.example.com",
        "https://ops.example.com/",
        "https://ops.example.com/path",
        "https://ops.example.com?x=1",
        "https://",
        "https://:8080",
        "https://ops.example.com:",
        "https://ops.example.com:0",
        "https://ops.example.com:99999",
        "https://user@ops.example.com",
        "https://Ops.Example.com",
        "https://[::1",
        "*",
    ] {
        assert!(check_origin(bad).is_err(), "{bad} should be rejected");
    }
    let err = load_err(&with_env(&[(
        "KEEL_SERVER__CORS_ALLOWED_ORIGINS",
        "https://a.example.com,https://b.example.com/",
    )]));
    assert!(err.starts_with("server.cors_allowed_origins[1]: "), "{err}");
}

#[test]
fn redacted_toml_hides_secrets_and_reloads() {
    let config = Config::load(&with_env(&[
        ("KEEL_AUTH__KEY_HASH_SECRET", "very-secret-value"),
        ("KEEL_STORE__MAX_BATCH", "99"),
    ]))
    .expect("loads");
    let text = config.to_redacted_toml();
    assert!(text.contains("key_hash_secret = \"***\""), "{text}");
    assert!(!text.contains("very-secret-value"), "{text}");
    assert!(!format!("{config:?}").contains("very-secret-value"));

    // The printed config is itself a valid config file (apart from the placeholder secret).
    let reread: Config = toml::from_str(&text).expect("redacted output parses");
    assert_eq!(reread.store.max_batch, 99);
    assert_eq!(reread.auth.key_hash_secret, Some(Secret::new("***")));
}

#[test]
fn secret_never_prints_its_value() {
    let secret = Secret::new("hunter2");
    assert_eq!(format!("{secret:?}"), "***");
    assert_eq!(format!("{secret}"), "***");
    assert_eq!(secret.expose(), "hunter2");
    assert_eq!(
        serde_json::to_string(&secret).expect("serializes"),
        "\"***\""
    );
    let options = with_env(&[("KEEL_AUTH__KEY_HASH_SECRET", "hunter2")]);
    assert!(!format!("{options:?}").contains("hunter2"));
}

#[test]
fn durations_follow_the_seconds_fields() {
    let config = Config::default();
    assert_eq!(config.server.request_timeout(), Duration::from_secs(30));
    assert_eq!(config.server.hsts_max_age(), None);
    assert_eq!(
        config.audit.checkpoint_interval(),
        Duration::from_secs(3600)
    );
    assert_eq!(config.auth.rotation_overlap(), Duration::from_secs(86_400));
    assert_eq!(config.auth.last_used_flush(), Duration::from_secs(60));
    assert_eq!(config.metrics.snapshot_interval(), Duration::from_secs(60));
    assert_eq!(config.metrics.retention(), Duration::from_secs(14 * 86_400));
    assert_eq!(config.shutdown.drain(), Duration::from_secs(30));
    assert_eq!(
        config.key_hash_secret_path(),
        PathBuf::from("./keel-data/key-hash.secret")
    );
}

const LLM_CONFIG: &str = r#"
[llm.providers.openai]
base_url = "https://api.example.com/v1"
model = "gpt-test"
input_usd_per_1k_tokens = 0.00015
output_usd_per_1k_tokens = 0.0006
max_tokens = 500
daily_budget_usd = 2.5

[handlers.ask]
kind = "llm"
provider = "openai"
max_tokens = 100

[handlers.report]
kind = "command"
program = "/bin/echo"

[handlers.digest]
kind = "workflow"
timeout_seconds = 90
[[handlers.digest.steps]]
name = "report"
handler = "report"
[[handlers.digest.steps]]
name = "summary"
handler = "ask"
payload = { prompt = "Summarize {{steps.report.result}} for {{payload.team}}" }
"#;

#[test]
fn llm_providers_and_workflows_parse() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key_path = dir.path().join("openai-key");
    std::fs::write(&key_path, "sk-from-file\n").expect("write key");
    let file = config_file(LLM_CONFIG);
    let options = LoadOptions {
        env: env(&[(
            "KEEL_LLM__PROVIDERS__OPENAI__API_KEY_FILE",
            &key_path.display().to_string(),
        )]),
        ..with_file(&file)
    };
    let config = Config::load(&options).expect("loads");
    let provider = &config.llm.providers["openai"];
    assert_eq!(
        provider.api_key.as_ref().map(Secret::expose),
        Some("sk-from-file")
    );
    // 0.00015 USD per 1K tokens = 150 nano-USD per token.
    assert_eq!(provider.input_nanos_per_token(), 150);
    assert_eq!(provider.output_nanos_per_token(), 600);
    assert_eq!(provider.daily_budget_micros(), 2_500_000);
    let HandlerConfig::Workflow(w) = &config.handlers["digest"] else {
        panic!("digest is a workflow: {:?}", config.handlers["digest"]);
    };
    assert_eq!(w.timeout_seconds, 90);
    assert_eq!(w.steps.len(), 2);
    assert_eq!(w.steps[0].payload, None);
    assert_eq!(
        w.steps[1].payload,
        Some(
            serde_json::json!({"prompt": "Summarize {{steps.report.result}} for {{payload.team}}"})
        )
    );
    assert!(matches!(&config.handlers["ask"], HandlerConfig::Llm(l) if l.max_tokens == Some(100)));

    // The printed config hides the key and reads back as the same config.
    let text = config.to_redacted_toml();
    assert!(!text.contains("sk-from-file"), "{text}");
    let reread: Config = toml::from_str(&text).expect("redacted output parses");
    assert_eq!(reread.handlers, config.handlers);
    assert_eq!(
        reread.llm.providers["openai"].api_key,
        Some(Secret::new("***"))
    );
}

#[test]
fn llm_and_workflow_mistakes_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "provider = \"openai\"",
            "provider = \"other\"",
            "handlers.ask.provider: no [llm.providers.other] is configured (configured: openai)",
        ),
        (
            "max_tokens = 100",
            "max_tokens = 501",
            "handlers.ask.max_tokens: must be between 1 and 500, got 501 (the cap is llm.providers.openai.max_tokens)",
        ),
        (
            "daily_budget_usd = 2.5",
            "daily_budget_usd = -1.0",
            "llm.providers.openai.daily_budget_usd:",
        ),
        (
            "output_usd_per_1k_tokens = 0.0006",
            "output_usd_per_1k_tokens = nan",
            "llm.providers.openai.output_usd_per_1k_tokens:",
        ),
        (
            "base_url = \"https://api.example.com/v1\"",
            "base_url = \"ftp://x.example.com\"",
            "llm.providers.openai.base_url:",
        ),
        (
            "[llm.providers.openai]",
            "[llm.providers.OpenAI]",
            "llm.providers.OpenAI: a provider name",
        ),
        (
            "handler = \"ask\"",
            "handler = \"nope\"",
            "handlers.digest.steps[1].handler: no [handlers.nope] is configured",
        ),
        (
            "handler = \"ask\"",
            "handler = \"digest\"",
            "handlers.digest.steps[1].handler: `digest` is a workflow",
        ),
        (
            "name = \"summary\"",
            "name = \"report\"",
            "handlers.digest.steps[1].name: the step name \"report\" is used twice",
        ),
        (
            "{{steps.report.result}}",
            "{{steps.summary.result}}",
            "handlers.digest.steps[1].payload: {{steps.summary.result}} names no earlier step (earlier: report)",
        ),
        (
            "{{payload.team}}",
            "{{env.HOME}}",
            "handlers.digest.steps[1].payload: unknown placeholder {{env.HOME}}",
        ),
        (
            "timeout_seconds = 90",
            "timeout_seconds = 0",
            "handlers.digest.timeout_seconds:",
        ),
    ];
    for (from, to, expected) in cases {
        assert!(LLM_CONFIG.contains(from), "{from}");
        let file = config_file(&LLM_CONFIG.replacen(from, to, 1));
        let err = load_err(&with_file(&file));
        assert!(err.starts_with(expected), "{from} -> {to}: {err}");
    }
    let no_steps = LLM_CONFIG
        .split("[[handlers.digest.steps]]")
        .next()
        .expect("head")
        .to_string()
        + "steps = []\n";
    let err = load_err(&with_file(&config_file(&no_steps)));
    assert!(
        err.starts_with("handlers.digest.steps: a workflow has 1 to 64 steps"),
        "{err}"
    );
}

#[test]
fn cron_lines_are_parsed_once_into_the_config_and_errors_name_the_key() {
    let config = Config::load(&with_env(&[
        ("KEEL_CYCLES__SCHEDULE", "0 9 * * 1-5"),
        ("KEEL_CYCLES__RUN_PROFILE_SCHEDULE", ""),
        ("KEEL_CYCLES__TIMEZONE", "Europe/Berlin"),
    ]))
    .expect("loads");
    assert_eq!(config.cycles.schedule.source(), "0 9 * * 1-5");
    assert!(config.cycles.run_profile_schedule.is_off());
    assert!(config.cycles.run_profiles_schedule().unwrap().is_none());
    let schedule = config.cycles.raw_schedule().unwrap().expect("on");
    // Friday 2026-01-02 09:00 UTC is after 09:00 Berlin; the next slot is Monday 08:00 UTC.
    assert_eq!(
        schedule.next_after(1_767_344_400_000),
        Some(1_767_600_000_000)
    );
    assert!(
        config
            .to_redacted_toml()
            .contains("schedule = \"0 9 * * 1-5\"")
    );

    let cases: &[(&str, &str, &str)] = &[
        (
            "KEEL_CYCLES__SCHEDULE",
            "* * *",
            "cycles.schedule: `* * *` has 3 fields",
        ),
        (
            "KEEL_CYCLES__RUN_PROFILE_SCHEDULE",
            "0 0 * * 9",
            "cycles.run_profile_schedule: day of week `9`",
        ),
        (
            "KEEL_CYCLES__SCHEDULE",
            "0 0 0 1 1 * 2001",
            "cycles.schedule: `0 0 0 1 1 * 2001` never fires",
        ),
        (
            "KEEL_CYCLES__TIMEZONE",
            "Mars/Base",
            "cycles.timezone: `Mars/Base` is not a known timezone",
        ),
        (
            "KEEL_CYCLES__DEFAULT_NAMESPACE",
            "-x",
            "cycles.default_namespace: a namespace is",
        ),
        (
            "KEEL_CYCLES__NAMESPACES",
            r#"["blue", "not valid!"]"#,
            "cycles.namespaces[1]: a namespace is",
        ),
        (
            "KEEL_CYCLES__NAMESPACES",
            r#"["blue", "green", "blue"]"#,
            "cycles.namespaces[2]: `blue` is listed twice",
        ),
    ];
    for (var, value, expected) in cases {
        let err = load_err(&with_env(&[(var, value)]));
        assert!(err.starts_with(expected), "{var}={value}: {err}");
    }
}
