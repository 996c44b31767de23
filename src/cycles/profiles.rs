//! Profiles and run profiles: `profiles.json` and `runProfiles.json`, validated against the
//! JSON Schemas embedded from `schemas/` and then against the rest of the configuration
//! (handlers, dispatch endpoints, references between the files). Every problem is reported with
//! its file and JSON pointer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::config::{Config, HandlerConfig};

/// File name of the profiles.
pub const PROFILES_FILE: &str = "profiles.json";
/// File name of the run profiles.
pub const RUN_PROFILES_FILE: &str = "runProfiles.json";

/// The schema of `profiles.json`.
pub const PROFILES_SCHEMA: &str = include_str!("../../schemas/profiles.schema.json");
/// The schema of `runProfiles.json`.
pub const RUN_PROFILES_SCHEMA: &str = include_str!("../../schemas/runProfiles.schema.json");

/// The embedded schemas by name, as served at `GET /api/v1/schemas/{name}`.
pub const SCHEMAS: [(&str, &str); 2] = [
    ("profiles", PROFILES_SCHEMA),
    ("runProfiles", RUN_PROFILES_SCHEMA),
];

/// The schema named `name` (`profiles`, `runProfiles`, with or without `.json` or
/// `.schema.json`).
pub fn schema(name: &str) -> Option<&'static str> {
    let base = name
        .strip_suffix(".schema.json")
        .or_else(|| name.strip_suffix(".json"))
        .unwrap_or(name);
    SCHEMAS.iter().find(|(n, _)| *n == base).map(|(_, s)| *s)
}

/// Whether a profile or run profile is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// In use.
    Enabled,
    /// Ignored by triggers and schedules.
    Disabled,
}

/// One transformation step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Step name, unique within its tier.
    pub name: String,
    /// Task type of an http or command handler.
    pub handler: String,
    /// Attempts before the step (and so its cycle) fails.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Time allowed per attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
}

/// The three tiers of transformations.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionRules {
    /// Tier 1 steps, in order.
    #[serde(default)]
    pub tier1: Vec<Step>,
    /// Tier 2 steps, in order.
    #[serde(default)]
    pub tier2: Vec<Step>,
    /// Tier 3 steps, in order.
    #[serde(default)]
    pub tier3: Vec<Step>,
}

impl ExecutionRules {
    /// The steps of tier `n` (1–3).
    pub fn tier(&self, n: u8) -> &[Step] {
        match n {
            1 => &self.tier1,
            2 => &self.tier2,
            _ => &self.tier3,
        }
    }
}

/// A profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Id.
    pub profile_id: String,
    /// Label.
    pub label: String,
    /// Opaque style settings.
    #[serde(default = "empty_object")]
    pub style_vector: Value,
    /// Opaque asset bindings.
    #[serde(default = "empty_object")]
    pub asset_bindings: Value,
    /// Transformation tiers.
    pub execution_rules: ExecutionRules,
    /// Distribution target → endpoint key.
    #[serde(default)]
    pub distribution_map: BTreeMap<String, String>,
    /// Value tags.
    #[serde(default)]
    pub value_tags: Map<String, Value>,
    /// Enabled or disabled.
    pub state: State,
}

/// A run profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunProfile {
    /// Id.
    pub run_profile_id: String,
    /// The profile it runs.
    pub profile_id: String,
    /// Opaque execution policy.
    #[serde(default = "empty_object")]
    pub execution_policy: Value,
    /// Opaque asset bundle.
    #[serde(default = "empty_object")]
    pub asset_bundle: Value,
    /// Where each run dispatches.
    #[serde(default)]
    pub distribution_targets: Vec<String>,
    /// Value tags recorded per run.
    #[serde(default)]
    pub value_tags: Map<String, Value>,
    /// Enabled or disabled.
    pub state: State,
    /// Namespace.
    pub namespace: String,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// One problem in a profile file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigIssue {
    /// The file.
    pub file: String,
    /// JSON pointer to the value (empty: the whole document).
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pointer = if self.pointer.is_empty() {
            "(document)"
        } else {
            &self.pointer
        };
        write!(f, "{} at {pointer}: {}", self.file, self.message)
    }
}

/// Every problem found in the profile files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssues(pub Vec<ConfigIssue>);

impl std::fmt::Display for ConfigIssues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the profile configuration has {} error{}:",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for issue in &self.0 {
            write!(f, "\n  {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigIssues {}

/// A validated set of profiles and run profiles.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileSet {
    /// Where the files were read from (empty: none configured).
    pub dir: PathBuf,
    /// Profiles, in file order.
    pub profiles: Vec<Profile>,
    /// Run profiles, in file order.
    pub run_profiles: Vec<RunProfile>,
    /// Version of each profile (set when the set is installed).
    pub versions: BTreeMap<String, u64>,
}

impl ProfileSet {
    /// The profile with this id.
    pub fn profile(&self, id: &str) -> Option<&Profile> {
        self.profiles.iter().find(|p| p.profile_id == id)
    }

    /// The run profile with this id.
    pub fn run_profile(&self, id: &str) -> Option<&RunProfile> {
        self.run_profiles.iter().find(|r| r.run_profile_id == id)
    }
}

fn compiled(which: &'static str) -> &'static jsonschema::Validator {
    static PROFILES: OnceLock<jsonschema::Validator> = OnceLock::new();
    static RUN_PROFILES: OnceLock<jsonschema::Validator> = OnceLock::new();
    let (cell, text) = if which == PROFILES_FILE {
        (&PROFILES, PROFILES_SCHEMA)
    } else {
        (&RUN_PROFILES, RUN_PROFILES_SCHEMA)
    };
    cell.get_or_init(|| {
        let schema: Value = serde_json::from_str(text).expect("embedded schema is JSON");
        jsonschema::validator_for(&schema).expect("embedded schema compiles")
    })
}

/// A stable text of a JSON value with object keys sorted, for hashing.
pub fn canonical_json(value: &Value) -> String {
    fn write(value: &Value, out: &mut String) {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Value::String((*k).clone()).to_string());
                    out.push(':');
                    write(&map[*k], out);
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(v, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(value, &mut out);
    out
}

/// Escapes one JSON pointer segment.
fn segment(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}

/// Checks a document against its schema; every error with its pointer.
fn schema_issues(file: &'static str, doc: &Value) -> Vec<ConfigIssue> {
    compiled(file)
        .iter_errors(doc)
        .map(|e| ConfigIssue {
            file: file.to_string(),
            pointer: e.instance_path().to_string(),
            message: e.to_string(),
        })
        .collect()
}

/// Reads and parses one file; problems are added to `issues`.
fn read_doc(dir: &Path, file: &'static str, issues: &mut Vec<ConfigIssue>) -> Option<Value> {
    let path = dir.join(file);
    let issue = |message: String| ConfigIssue {
        file: file.to_string(),
        pointer: String::new(),
        message,
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            issues.push(issue(format!("cannot read {}: {e}", path.display())));
            return None;
        }
    };
    match serde_json::from_str::<Value>(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            issues.push(issue(format!(
                "not valid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            )));
            None
        }
    }
}

/// Loads and validates the files in `config.cycles.profiles_dir` (none when it is empty).
pub fn load(config: &Config) -> Result<ProfileSet, ConfigIssues> {
    let dir = config.cycles.profiles_dir.clone();
    if dir.as_os_str().is_empty() {
        return Ok(ProfileSet::default());
    }
    let mut issues = Vec::new();
    let profiles = read_doc(&dir, PROFILES_FILE, &mut issues);
    let run_profiles = read_doc(&dir, RUN_PROFILES_FILE, &mut issues);
    match (profiles, run_profiles) {
        (Some(profiles), Some(run_profiles)) => validate(config, dir, &profiles, &run_profiles),
        (profiles, run_profiles) => {
            // Check whichever file did parse, so one answer lists everything known.
            for (file, doc) in [(PROFILES_FILE, profiles), (RUN_PROFILES_FILE, run_profiles)] {
                if let Some(doc) = doc {
                    issues.extend(schema_issues(file, &doc));
                }
            }
            Err(ConfigIssues(issues))
        }
    }
}

/// Validates parsed documents: the schemas first, then references and names.
pub fn validate(
    config: &Config,
    dir: PathBuf,
    profiles_doc: &Value,
    run_profiles_doc: &Value,
) -> Result<ProfileSet, ConfigIssues> {
    let mut issues = schema_issues(PROFILES_FILE, profiles_doc);
    let run_schema = schema_issues(RUN_PROFILES_FILE, run_profiles_doc);
    // Elements without a schema error of their own are checked further, so that one answer
    // lists every problem there is.
    let profiles: Vec<(usize, Profile)> =
        parse_valid(PROFILES_FILE, profiles_doc, &issues.clone(), &mut issues);
    issues.extend(run_schema.iter().cloned());
    let run_profiles: Vec<(usize, RunProfile)> = parse_valid(
        RUN_PROFILES_FILE,
        run_profiles_doc,
        &run_schema,
        &mut issues,
    );
    // Ids present in the file, valid or not: a reference to one is not reported again.
    let ids_in_file: BTreeSet<&str> = profiles_doc
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|p| p["profile_id"].as_str())
                .collect()
        })
        .unwrap_or_default();

    let issue = |file: &str, pointer: String, message: String| ConfigIssue {
        file: file.to_string(),
        pointer,
        message,
    };
    let mut seen = BTreeSet::new();
    for (i, p) in &profiles {
        if !seen.insert(p.profile_id.as_str()) {
            issues.push(issue(
                PROFILES_FILE,
                format!("/{i}/profile_id"),
                format!("profile_id `{}` is used twice", p.profile_id),
            ));
        }
        for tier in 1..=3u8 {
            let mut step_names = BTreeSet::new();
            for (j, step) in p.execution_rules.tier(tier).iter().enumerate() {
                let at = format!("/{i}/execution_rules/tier{tier}/{j}");
                if !step_names.insert(step.name.as_str()) {
                    issues.push(issue(
                        PROFILES_FILE,
                        format!("{at}/name"),
                        format!("step name `{}` is used twice in tier{tier}", step.name),
                    ));
                }
                match config.handlers.get(&step.handler) {
                    Some(HandlerConfig::Http(_) | HandlerConfig::Command(_)) => {}
                    Some(_) => issues.push(issue(
                        PROFILES_FILE,
                        format!("{at}/handler"),
                        format!(
                            "handler `{}` is not an http or command handler",
                            step.handler
                        ),
                    )),
                    None => issues.push(issue(
                        PROFILES_FILE,
                        format!("{at}/handler"),
                        format!(
                            "no [handlers.{}] is configured in keel.toml (configured: {})",
                            step.handler,
                            names(config.handlers.keys())
                        ),
                    )),
                }
                if let Some(t) = step.timeout_seconds
                    && t >= config.queue.lease_seconds
                {
                    issues.push(issue(
                        PROFILES_FILE,
                        format!("{at}/timeout_seconds"),
                        format!(
                            "must be shorter than queue.lease_seconds ({})",
                            config.queue.lease_seconds
                        ),
                    ));
                }
            }
        }
        for (target, endpoint) in &p.distribution_map {
            if !config.dispatch.endpoints.contains_key(endpoint) {
                issues.push(issue(
                    PROFILES_FILE,
                    format!("/{i}/distribution_map/{}", segment(target)),
                    format!(
                        "no [dispatch.endpoints.{endpoint}] is configured in keel.toml (configured: {})",
                        names(config.dispatch.endpoints.keys())
                    ),
                ));
            }
        }
    }
    let mut seen = BTreeSet::new();
    for (i, r) in &run_profiles {
        if !seen.insert(r.run_profile_id.as_str()) {
            issues.push(issue(
                RUN_PROFILES_FILE,
                format!("/{i}/run_profile_id"),
                format!("run_profile_id `{}` is used twice", r.run_profile_id),
            ));
        }
        let Some((_, profile)) = profiles.iter().find(|(_, p)| p.profile_id == r.profile_id) else {
            if !ids_in_file.contains(r.profile_id.as_str()) {
                issues.push(issue(
                    RUN_PROFILES_FILE,
                    format!("/{i}/profile_id"),
                    format!("no profile `{}` in {PROFILES_FILE}", r.profile_id),
                ));
            }
            continue;
        };
        for (j, target) in r.distribution_targets.iter().enumerate() {
            let endpoint = profile.distribution_map.get(target).unwrap_or(target);
            if !config.dispatch.endpoints.contains_key(endpoint) {
                issues.push(issue(
                    RUN_PROFILES_FILE,
                    format!("/{i}/distribution_targets/{j}"),
                    format!(
                        "`{target}` is neither in the distribution_map of profile `{}` nor a [dispatch.endpoints.<key>] in keel.toml (configured: {})",
                        profile.profile_id,
                        names(config.dispatch.endpoints.keys())
                    ),
                ));
            }
        }
    }
    if !issues.is_empty() {
        return Err(ConfigIssues(issues));
    }
    Ok(ProfileSet {
        dir,
        profiles: profiles.into_iter().map(|(_, p)| p).collect(),
        run_profiles: run_profiles.into_iter().map(|(_, r)| r).collect(),
        versions: BTreeMap::new(),
    })
}

/// The elements of an array document that have no schema error of their own, parsed (with
/// their index); a document with an error of its own (not an array) yields none.
fn parse_valid<T: serde::de::DeserializeOwned>(
    file: &str,
    doc: &Value,
    schema: &[ConfigIssue],
    issues: &mut Vec<ConfigIssue>,
) -> Vec<(usize, T)> {
    let Some(items) = doc.as_array() else {
        return Vec::new();
    };
    if schema.iter().any(|s| s.pointer.is_empty()) {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("/{i}");
        let own = schema
            .iter()
            .any(|s| s.pointer == at || s.pointer.starts_with(&format!("{at}/")));
        if own {
            continue;
        }
        match serde_json::from_value(item.clone()) {
            Ok(t) => out.push((i, t)),
            Err(e) => issues.push(ConfigIssue {
                file: file.to_string(),
                pointer: at,
                message: format!("does not fit keel's model: {e}"),
            }),
        }
    }
    out
}

fn names<'a>(keys: impl Iterator<Item = &'a String>) -> String {
    let list: Vec<&str> = keys.map(String::as_str).collect();
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// Applies an RFC 7396 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(map) = target {
                for (k, v) in patch {
                    if v.is_null() {
                        map.remove(k);
                    } else {
                        merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Config {
        let mut c = Config::default();
        c.handlers.insert(
            "enrich".into(),
            HandlerConfig::Command(serde_json::from_value(json!({"program": "/bin/cat"})).unwrap()),
        );
        c.dispatch.endpoints.insert(
            "aurora".into(),
            serde_json::from_value(json!({"url": "http://127.0.0.1:9/x"})).unwrap(),
        );
        c
    }

    fn profile(id: &str) -> Value {
        json!({"profile_id": id, "label": "P", "state": "enabled",
               "execution_rules": {"tier1": [{"name": "a", "handler": "enrich"}]},
               "distribution_map": {"main": "aurora"}})
    }

    #[test]
    fn valid_files_load() {
        let set = validate(
            &config(),
            PathBuf::from("x"),
            &json!([profile("p1")]),
            &json!([{"run_profile_id": "r1", "profile_id": "p1", "state": "enabled",
                     "namespace": "ns", "distribution_targets": ["main", "aurora"]}]),
        )
        .unwrap();
        assert_eq!(set.profiles[0].execution_rules.tier1[0].handler, "enrich");
        assert_eq!(set.run_profile("r1").unwrap().namespace, "ns");
    }

    #[test]
    fn every_schema_error_is_listed_with_its_pointer() {
        let err = validate(
            &config(),
            PathBuf::from("x"),
            &json!([{"profile_id": "bad id", "label": "", "state": "on", "execution_rules": {}}]),
            &json!([{"run_profile_id": "r1", "profile_id": "p1", "state": "enabled"}]),
        )
        .unwrap_err();
        let got: BTreeSet<(String, String)> = err
            .0
            .iter()
            .map(|i| (i.file.clone(), i.pointer.clone()))
            .collect();
        for want in [
            (PROFILES_FILE, "/0/profile_id"),
            (PROFILES_FILE, "/0/label"),
            (PROFILES_FILE, "/0/state"),
            (RUN_PROFILES_FILE, "/0"),
        ] {
            assert!(
                got.contains(&(want.0.to_string(), want.1.to_string())),
                "{want:?} missing from {err}"
            );
        }
    }

    #[test]
    fn references_are_checked_after_the_schema() {
        let mut p = profile("p1");
        p["execution_rules"]["tier2"] = json!([{"name": "x", "handler": "nope"}]);
        let err = validate(
            &config(),
            PathBuf::from("x"),
            &json!([p, profile("p1")]),
            &json!([{"run_profile_id": "r1", "profile_id": "p9", "state": "enabled", "namespace": "n"},
                     {"run_profile_id": "r2", "profile_id": "p1", "state": "enabled", "namespace": "n",
                      "distribution_targets": ["elsewhere"]}]),
        )
        .unwrap_err();
        let pointers: Vec<&str> = err.0.iter().map(|i| i.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            vec![
                "/0/execution_rules/tier2/0/handler",
                "/1/profile_id",
                "/0/profile_id",
                "/1/distribution_targets/0"
            ],
            "{err}"
        );
    }

    #[test]
    fn reference_errors_are_listed_with_schema_errors() {
        let mut good = profile("p1");
        good["execution_rules"]["tier1"][0]["handler"] = json!("nope");
        let mut bad = profile("p2");
        bad["state"] = json!("x");
        let err = validate(
            &config(),
            PathBuf::from("x"),
            &json!([good, bad]),
            &json!([{"run_profile_id": "r1", "profile_id": "p1", "state": "enabled",
                     "namespace": "n", "distribution_targets": ["elsewhere"]},
                    {"run_profile_id": "r2", "profile_id": "p2", "state": "enabled"},
                    {"run_profile_id": "r3", "profile_id": "p2", "state": "enabled",
                     "namespace": "n"}]),
        )
        .unwrap_err();
        let got: BTreeSet<(String, String)> = err
            .0
            .iter()
            .map(|i| (i.file.clone(), i.pointer.clone()))
            .collect();
        let want: BTreeSet<(String, String)> = [
            (PROFILES_FILE, "/0/execution_rules/tier1/0/handler"),
            (PROFILES_FILE, "/1/state"),
            (RUN_PROFILES_FILE, "/0/distribution_targets/0"),
            (RUN_PROFILES_FILE, "/1"),
        ]
        .iter()
        .map(|(f, p)| (f.to_string(), p.to_string()))
        .collect();
        // r3 names p2, which is in the file (though invalid): no second error for it.
        assert_eq!(got, want, "{err}");
    }

    #[test]
    fn canonical_json_sorts_keys() {
        assert_eq!(
            canonical_json(&json!({"b": [1, {"d": 1, "c": 2}], "a": "x"})),
            r#"{"a":"x","b":[1,{"c":2,"d":1}]}"#
        );
    }

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut v = json!({"a": 1, "b": {"c": 2, "d": 3}});
        merge_patch(&mut v, &json!({"a": null, "b": {"c": 5}, "e": [1]}));
        assert_eq!(v, json!({"b": {"c": 5, "d": 3}, "e": [1]}));
    }

    #[test]
    fn schemas_are_found_by_name() {
        assert!(schema("profiles").is_some());
        assert!(schema("runProfiles.json").is_some());
        assert!(schema("runProfiles.schema.json").is_some());
        assert!(schema("other").is_none());
    }
}
