//! The API reference page: the OpenAPI document (`crate::http::openapi`) rendered for people,
//! with every operation's method, path, roles, parameters, request and response bodies and
//! examples, and every schema with its fields. Built once from the document; no script needed.

use std::sync::OnceLock;

use askama::Template;
use askama_web::WebTemplate;
use utoipa::openapi::path::{Operation, Parameter, ParameterIn};
use utoipa::openapi::request_body::RequestBody;
use utoipa::openapi::response::Response;
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayItems, KnownFormat, Object, Schema, SchemaFormat, SchemaType, Type,
};
use utoipa::openapi::{Content, OpenApi, RefOr, Required};

use super::{Ctx, Layout};
use crate::http::openapi::document;

/// A piece of text, shown as code or not.
pub struct Rich {
    /// The text.
    pub text: String,
    /// Whether it is code (it was between backticks).
    pub code: bool,
}

/// Text with `code` spans, as pieces.
fn rich(text: &str) -> Vec<Rich> {
    text.split('`')
        .enumerate()
        .filter(|(_, t)| !t.is_empty())
        .map(|(i, t)| Rich {
            text: t.to_string(),
            code: i % 2 == 1,
        })
        .collect()
}

/// A piece of a type: text, linking to a schema when it names one.
pub struct Seg {
    /// The text.
    pub text: String,
    /// The schema it names, if any (its anchor is `schema-<name>`).
    pub schema: Option<String>,
}

fn plain(text: impl Into<String>) -> Seg {
    Seg {
        text: text.into(),
        schema: None,
    }
}

/// One operation of the API.
pub struct OpView {
    /// Anchor (the operation id).
    pub id: String,
    /// `GET`, `POST`, …
    pub method: String,
    /// The path template.
    pub path: String,
    /// One line.
    pub summary: Vec<Rich>,
    /// The rest.
    pub description: Vec<Rich>,
    /// Roles that may call it; empty for a public route.
    pub roles: Vec<String>,
    /// Path and query parameters.
    pub params: Vec<FieldView>,
    /// The request body, if it takes one.
    pub body: Option<BodyView>,
    /// The answers documented for this operation.
    pub responses: Vec<ResponseView>,
    /// The shared error answers it can also give: status and name.
    pub shared_errors: Vec<(String, String)>,
}

/// A parameter or a field of a schema.
pub struct FieldView {
    /// Its name.
    pub name: String,
    /// Where it goes (parameters only): `path` or `query`.
    pub location: &'static str,
    /// Its type.
    pub ty: Vec<Seg>,
    /// Whether it must be given.
    pub required: bool,
    /// What it is.
    pub description: Vec<Rich>,
    /// Bounds, pattern and the like.
    pub constraints: String,
}

/// A request body.
pub struct BodyView {
    /// Its media types.
    pub content_types: String,
    /// Whether it must be sent.
    pub required: bool,
    /// What it is.
    pub description: Vec<Rich>,
    /// Its type.
    pub ty: Vec<Seg>,
    /// An example, pretty-printed.
    pub example: Option<String>,
}

/// One documented answer of an operation.
pub struct ResponseView {
    /// The status code.
    pub status: String,
    /// `st-ok` (2xx) or `st-error`, for styling.
    pub class: &'static str,
    /// What it means.
    pub description: Vec<Rich>,
    /// Its media type, if it has a body.
    pub content_type: String,
    /// The body's type.
    pub ty: Vec<Seg>,
    /// An example, pretty-printed.
    pub example: Option<String>,
    /// The shared error answer it is (anchor `error-<name>`), if it is one.
    pub shared: Option<String>,
}

/// An error answer many operations share.
pub struct SharedError {
    /// Its name (anchor `error-<name>`).
    pub name: String,
    /// Its status.
    pub status: String,
    /// What it means.
    pub description: Vec<Rich>,
    /// An example, pretty-printed.
    pub example: Option<String>,
}

/// A group of operations (a tag).
pub struct GroupView {
    /// The tag.
    pub name: String,
    /// What it covers.
    pub description: Vec<Rich>,
    /// Its operations, in path order.
    pub ops: Vec<OpView>,
}

/// A named schema.
pub struct SchemaView {
    /// Its name (anchor `schema-<name>`).
    pub name: String,
    /// What it is.
    pub description: Vec<Rich>,
    /// Its type, for a schema that is not an object with fields.
    pub ty: Vec<Seg>,
    /// Schemas whose fields it includes.
    pub includes: Vec<Seg>,
    /// Its fields.
    pub fields: Vec<FieldView>,
    /// Alternatives of a `oneOf` whose alternatives are objects.
    pub variants: Vec<VariantView>,
    /// An example, pretty-printed.
    pub example: Option<String>,
}

/// One alternative of a schema.
pub struct VariantView {
    /// What it is.
    pub description: Vec<Rich>,
    /// Its fields.
    pub fields: Vec<FieldView>,
}

/// The whole reference, built once.
pub struct Reference {
    /// Title and version.
    pub title: String,
    /// keel's version.
    pub version: String,
    /// The OpenAPI version.
    pub openapi: String,
    /// The introduction.
    pub intro: Vec<Vec<Rich>>,
    /// Operations by tag.
    pub groups: Vec<GroupView>,
    /// Every named schema.
    pub schemas: Vec<SchemaView>,
    /// The error answers operations share.
    pub errors: Vec<SharedError>,
    /// Number of operations.
    pub operations: usize,
}

fn ref_name(location: &str) -> String {
    location.rsplit('/').next().unwrap_or(location).to_string()
}

fn type_name(t: &Type) -> &'static str {
    match t {
        Type::Object => "object",
        Type::String => "string",
        Type::Integer => "integer",
        Type::Number => "number",
        Type::Boolean => "boolean",
        Type::Array => "array",
        Type::Null => "null",
    }
}

fn format_name(f: &SchemaFormat) -> Option<String> {
    Some(match f {
        SchemaFormat::KnownFormat(KnownFormat::Uuid) => "uuid".into(),
        SchemaFormat::KnownFormat(KnownFormat::DateTime) => "date-time".into(),
        SchemaFormat::KnownFormat(KnownFormat::Date) => "date".into(),
        SchemaFormat::KnownFormat(KnownFormat::Binary) => "binary".into(),
        SchemaFormat::Custom(c) => c.clone(),
        _ => return None,
    })
}

/// The type of a schema, as pieces: `string (uuid)`, `array of Task`, `Timestamp | null`.
fn ty(schema: &RefOr<Schema>) -> Vec<Seg> {
    match schema {
        RefOr::Ref(r) => {
            let name = ref_name(&r.ref_location);
            vec![Seg {
                text: name.clone(),
                schema: Some(name),
            }]
        }
        RefOr::T(s) => schema_ty(s),
    }
}

fn join(items: &[RefOr<Schema>], sep: &str) -> Vec<Seg> {
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(plain(sep));
        }
        out.extend(ty(item));
    }
    out
}

fn nullable(types: &SchemaType) -> bool {
    matches!(types, SchemaType::Array(ts) if ts.contains(&Type::Null))
}

fn schema_ty(s: &Schema) -> Vec<Seg> {
    match s {
        Schema::Array(a) => {
            let mut out = vec![plain("array of ")];
            match &a.items {
                ArrayItems::RefOrSchema(item) => out.extend(ty(item)),
                ArrayItems::False => out.push(plain("nothing")),
            }
            if nullable(&a.schema_type) {
                out.push(plain(" | null"));
            }
            out
        }
        Schema::Object(o) => object_ty(o),
        Schema::OneOf(o) => join(&o.items, " | "),
        Schema::AnyOf(o) => join(&o.items, " | "),
        Schema::AllOf(o) => join(&o.items, " & "),
        _ => vec![plain("any JSON")],
    }
}

fn object_ty(o: &Object) -> Vec<Seg> {
    if let Some(values) = &o.enum_values {
        let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        return vec![plain(format!("one of {}", values.join(", ")))];
    }
    let base = match &o.schema_type {
        SchemaType::AnyValue => return vec![plain("any JSON")],
        SchemaType::Type(t) => vec![type_name(t)],
        SchemaType::Array(ts) => ts.iter().map(type_name).collect(),
    };
    let mut out = Vec::new();
    for (i, t) in base.iter().enumerate() {
        if i > 0 {
            out.push(plain(" | "));
        }
        if *t == "object" && o.properties.is_empty() {
            match o.additional_properties.as_deref() {
                Some(AdditionalProperties::RefOr(value)) => {
                    out.push(plain("map of string to "));
                    out.extend(ty(value));
                }
                Some(AdditionalProperties::FreeForm(true)) => {
                    out.push(plain("map of string to any JSON"))
                }
                _ => out.push(plain("object")),
            }
        } else {
            out.push(plain(*t));
        }
    }
    if let Some(f) = o.format.as_ref().and_then(format_name) {
        out.push(plain(format!(" ({f})")));
    }
    out
}

fn number(n: &utoipa::Number) -> String {
    match serde_json::to_value(n) {
        Ok(serde_json::Value::Number(v)) => match v.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => v.to_string(),
        },
        _ => String::new(),
    }
}

fn constraints(schema: &RefOr<Schema>) -> String {
    let RefOr::T(Schema::Object(o)) = schema else {
        return String::new();
    };
    let mut out = Vec::new();
    if let Some(min) = &o.minimum {
        out.push(format!("≥ {}", number(min)));
    }
    if let Some(max) = &o.maximum {
        out.push(format!("≤ {}", number(max)));
    }
    if let Some(p) = &o.pattern {
        out.push(format!("matches {p}"));
    }
    if let Some(n) = o.min_length {
        out.push(format!("at least {n} characters"));
    }
    if let Some(n) = o.max_length {
        out.push(format!("at most {n} characters"));
    }
    out.join(", ")
}

fn schema_description(schema: &RefOr<Schema>) -> Option<&str> {
    match schema {
        RefOr::Ref(r) => (!r.description.is_empty()).then_some(r.description.as_str()),
        RefOr::T(Schema::Object(o)) => o.description.as_deref(),
        RefOr::T(Schema::Array(a)) => a.description.as_deref(),
        RefOr::T(Schema::OneOf(o)) => o.description.as_deref(),
        RefOr::T(Schema::AllOf(o)) => o.description.as_deref(),
        _ => None,
    }
}

/// The description of a property; utoipa puts it on the non-null alternative of an optional.
fn property_description(schema: &RefOr<Schema>) -> String {
    if let Some(d) = schema_description(schema) {
        return d.to_string();
    }
    if let RefOr::T(Schema::OneOf(o)) = schema {
        for item in &o.items {
            if let Some(d) = schema_description(item) {
                return d.to_string();
            }
        }
    }
    String::new()
}

fn fields(o: &Object) -> Vec<FieldView> {
    o.properties
        .iter()
        .map(|(name, schema)| FieldView {
            name: name.clone(),
            location: "",
            ty: ty(schema),
            required: o.required.contains(name),
            description: rich(&property_description(schema)),
            constraints: constraints(schema),
        })
        .collect()
}

fn pretty(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) if s.contains('\n') => s.clone(),
        v => serde_json::to_string_pretty(v).unwrap_or_default(),
    }
}

fn schema_example(doc: &OpenApi, schema: &RefOr<Schema>) -> Option<String> {
    let schema = match schema {
        RefOr::Ref(r) => doc
            .components
            .as_ref()?
            .schemas
            .get(&ref_name(&r.ref_location))?,
        other => other,
    };
    let example = match schema {
        RefOr::T(Schema::Object(o)) => o.example.as_ref().or(o.examples.first()),
        RefOr::T(Schema::Array(a)) => a.example.as_ref(),
        RefOr::T(Schema::OneOf(o)) => o.example.as_ref(),
        RefOr::T(Schema::AllOf(o)) => o.example.as_ref(),
        _ => None,
    }?;
    Some(pretty(example))
}

fn content_example(doc: &OpenApi, content: &Content) -> Option<String> {
    if let Some(e) = &content.example {
        return Some(pretty(e));
    }
    content.schema.as_ref().and_then(|s| schema_example(doc, s))
}

fn first_content(
    content: impl IntoIterator<Item = (String, RefOr<Content>)>,
) -> Option<(String, Content)> {
    content.into_iter().find_map(|(ct, c)| match c {
        RefOr::T(c) => Some((ct, c)),
        RefOr::Ref(_) => None,
    })
}

fn body_view(doc: &OpenApi, body: &RequestBody) -> BodyView {
    let types: Vec<&str> = body.content.keys().map(String::as_str).collect();
    let first = first_content(body.content.clone());
    BodyView {
        content_types: types.join(", "),
        required: matches!(body.required, Some(Required::True)),
        description: rich(body.description.as_deref().unwrap_or("")),
        ty: first
            .as_ref()
            .and_then(|(_, c)| c.schema.as_ref())
            .map(ty)
            .unwrap_or_default(),
        example: first.as_ref().and_then(|(_, c)| content_example(doc, c)),
    }
}

fn response_view(doc: &OpenApi, status: &str, response: &RefOr<Response>) -> ResponseView {
    let shared = match response {
        RefOr::Ref(r) => Some(ref_name(&r.ref_location)),
        RefOr::T(_) => None,
    };
    let resolved = match response {
        RefOr::T(r) => Some(r),
        RefOr::Ref(r) => doc.components.as_ref().and_then(|c| {
            match c.responses.get(&ref_name(&r.ref_location)) {
                Some(RefOr::T(r)) => Some(r),
                _ => None,
            }
        }),
    };
    let (description, content) = match resolved {
        Some(r) => (r.description.clone(), first_content(r.content.clone())),
        None => (String::new(), None),
    };
    ResponseView {
        status: status.to_string(),
        class: if status.starts_with('2') {
            "st-ok"
        } else {
            "st-error"
        },
        description: if shared.is_some() {
            Vec::new()
        } else {
            rich(&description)
        },
        content_type: content
            .as_ref()
            .map(|(ct, _)| ct.clone())
            .unwrap_or_default(),
        ty: content
            .as_ref()
            .and_then(|(_, c)| c.schema.as_ref())
            .map(ty)
            .unwrap_or_default(),
        // Error bodies link to `ErrorBody` and the shared errors, which carry the examples.
        example: match (&shared, &content) {
            (None, Some((_, c))) if c.example.is_some() || status.starts_with('2') => {
                content_example(doc, c)
            }
            _ => None,
        },
        shared,
    }
}

fn shared_errors(doc: &OpenApi) -> Vec<SharedError> {
    let Some(components) = &doc.components else {
        return Vec::new();
    };
    let mut errors: Vec<SharedError> = components
        .responses
        .iter()
        .filter_map(|(name, r)| match r {
            RefOr::T(r) => Some((name, r)),
            RefOr::Ref(_) => None,
        })
        .map(|(name, r)| {
            let content = first_content(r.content.clone());
            SharedError {
                name: name.clone(),
                status: String::new(),
                description: rich(&r.description),
                example: content.as_ref().and_then(|(_, c)| content_example(doc, c)),
            }
        })
        .collect();
    for e in &mut errors {
        e.status = doc
            .paths
            .paths
            .values()
            .flat_map(|i| [&i.get, &i.post, &i.put, &i.patch, &i.delete])
            .flatten()
            .flat_map(|op| op.responses.responses.iter())
            .find(|(_, r)| matches!(r, RefOr::Ref(x) if ref_name(&x.ref_location) == e.name))
            .map(|(status, _)| status.clone())
            .unwrap_or_default();
    }
    errors.sort_by(|a, b| a.status.cmp(&b.status));
    errors
}

fn param_view(p: &Parameter) -> FieldView {
    let schema = p.schema.clone().unwrap_or_default();
    FieldView {
        name: p.name.clone(),
        location: match p.parameter_in {
            ParameterIn::Path => "path",
            ParameterIn::Query => "query",
            ParameterIn::Header => "header",
            _ => "other",
        },
        ty: ty(&schema),
        required: matches!(p.required, Required::True),
        description: rich(p.description.as_deref().unwrap_or("")),
        constraints: constraints(&schema),
    }
}

fn op_view(doc: &OpenApi, method: &str, path: &str, op: &Operation) -> OpView {
    let roles = op
        .extensions
        .as_ref()
        .and_then(|e| e.get("x-roles"))
        .and_then(|v| v.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    OpView {
        id: op.operation_id.clone().unwrap_or_else(|| path.to_string()),
        method: method.to_string(),
        path: path.to_string(),
        summary: rich(op.summary.as_deref().unwrap_or("")),
        description: rich(op.description.as_deref().unwrap_or("")),
        roles,
        params: op
            .parameters
            .iter()
            .flatten()
            .filter_map(|p| match p {
                RefOr::T(p) => Some(param_view(p)),
                RefOr::Ref(_) => None,
            })
            .collect(),
        body: match &op.request_body {
            Some(RefOr::T(b)) => Some(body_view(doc, b)),
            _ => None,
        },
        responses: op
            .responses
            .responses
            .iter()
            .filter(|(_, r)| matches!(r, RefOr::T(_)))
            .map(|(status, r)| response_view(doc, status, r))
            .collect(),
        shared_errors: op
            .responses
            .responses
            .iter()
            .filter_map(|(status, r)| match r {
                RefOr::Ref(x) => Some((status.clone(), ref_name(&x.ref_location))),
                RefOr::T(_) => None,
            })
            .collect(),
    }
}

fn schema_view(doc: &OpenApi, name: &str, schema: &RefOr<Schema>) -> SchemaView {
    let mut view = SchemaView {
        name: name.to_string(),
        description: rich(schema_description(schema).unwrap_or("")),
        ty: Vec::new(),
        includes: Vec::new(),
        fields: Vec::new(),
        variants: Vec::new(),
        example: schema_example(doc, schema),
    };
    match schema {
        RefOr::T(Schema::Object(o)) if !o.properties.is_empty() => view.fields = fields(o),
        RefOr::T(Schema::AllOf(all)) => {
            for item in &all.items {
                match item {
                    RefOr::T(Schema::Object(o)) if !o.properties.is_empty() => {
                        view.fields.extend(fields(o))
                    }
                    other => {
                        if !view.includes.is_empty() {
                            view.includes.push(plain(", "));
                        }
                        view.includes.extend(ty(other));
                    }
                }
            }
        }
        RefOr::T(Schema::OneOf(one))
            if one
                .items
                .iter()
                .all(|i| matches!(i, RefOr::T(Schema::Object(o)) if !o.properties.is_empty())) =>
        {
            for item in &one.items {
                if let RefOr::T(Schema::Object(o)) = item {
                    view.variants.push(VariantView {
                        description: rich(o.description.as_deref().unwrap_or("")),
                        fields: fields(o),
                    });
                }
            }
        }
        other => view.ty = ty(other),
    }
    view
}

fn build(doc: &OpenApi) -> Reference {
    let mut groups: Vec<GroupView> = doc
        .tags
        .iter()
        .flatten()
        .map(|t| GroupView {
            name: t.name.clone(),
            description: rich(t.description.as_deref().unwrap_or("")),
            ops: Vec::new(),
        })
        .collect();
    let mut operations = 0;
    for (path, item) in &doc.paths.paths {
        for (method, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("PATCH", &item.patch),
            ("DELETE", &item.delete),
        ] {
            let Some(op) = op else { continue };
            operations += 1;
            let tag = op
                .tags
                .as_ref()
                .and_then(|t| t.first())
                .cloned()
                .unwrap_or_else(|| "other".to_string());
            let view = op_view(doc, method, path, op);
            match groups.iter_mut().find(|g| g.name == tag) {
                Some(g) => g.ops.push(view),
                None => groups.push(GroupView {
                    name: tag,
                    description: Vec::new(),
                    ops: vec![view],
                }),
            }
        }
    }
    groups.retain(|g| !g.ops.is_empty());
    let schemas = doc
        .components
        .iter()
        .flat_map(|c| c.schemas.iter())
        .map(|(name, s)| schema_view(doc, name, s))
        .collect();
    Reference {
        title: doc.info.title.clone(),
        version: doc.info.version.clone(),
        openapi: serde_json::to_value(&doc.openapi)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default(),
        intro: doc
            .info
            .description
            .as_deref()
            .unwrap_or("")
            .split("\n\n")
            .map(rich)
            .collect(),
        groups,
        schemas,
        errors: shared_errors(doc),
        operations,
    }
}

/// The reference of this process's document.
pub fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| build(document()))
}

#[derive(Template, WebTemplate)]
#[template(path = "admin/api.html")]
pub struct ApiPage {
    l: Layout,
    r: &'static Reference,
}

/// `GET /admin/api`.
pub async fn page(ctx: Ctx) -> ApiPage {
    ApiPage {
        l: ctx.layout("API", "api"),
        r: reference(),
    }
}
