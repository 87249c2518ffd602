//! Checks an IAM policy document against [`super::CALLS`], two ways:
//!
//! - [`allows`] evaluates one authorization the way IAM does, for the part of the policy
//!   language Flotilla's policy uses (Allow/Deny; `Action`/`Resource` with `*` and `?`;
//!   `StringEquals`, `StringLike`, `Null`, the `ForAllValues:`/`ForAnyValue:` prefixes and
//!   `IfExists`), anything else refused as [`Unsupported`]. [`requests`] turns a call into the
//!   authorizations EC2 makes for it (one per resource, plus the `CreateTags` of tag-on-create).
//! - [`check`] is the structural rule set, whatever the resources' tags: every grant on an
//!   existing resource Flotilla owns requires its owner tag to equal the cluster's name
//!   exactly; every creation requires the owner tag in the request and limits the tag keys;
//!   `ec2:CreateTags` carries `ec2:CreateAction`, or covers only resource types no statement
//!   grants anything on by their tags (tagging them unlocks nothing); no action or resource
//!   Flotilla does not use.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{CALLS, Call, Owner, Use, creating_actions, tag_keys};

/// A condition operator or policy element [`allows`] does not evaluate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("statement {sid}: {what} is not understood by this checker")]
pub struct Unsupported {
    pub sid: String,
    pub what: String,
}

/// One authorization: an action on one resource, with the request context IAM sees.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub action: String,
    pub resource: String,
    /// The resource's tags, when it exists.
    pub resource_tags: BTreeMap<String, String>,
    /// The tags the request puts on this resource (`aws:RequestTag/*`, `aws:TagKeys`).
    pub request_tags: BTreeMap<String, String>,
    /// `ec2:CreateAction`: the creating action, for the `CreateTags` of tag-on-create.
    pub create_action: Option<String>,
}

impl Request {
    fn values(&self, key: &str) -> Option<Vec<String>> {
        let lower = key.to_ascii_lowercase();
        let tag = |m: &BTreeMap<String, String>, prefix_len: usize| m.get(&key[prefix_len..]).map(|v| vec![v.clone()]);
        if lower.starts_with("aws:resourcetag/") || lower.starts_with("ec2:resourcetag/") {
            tag(&self.resource_tags, "aws:ResourceTag/".len())
        } else if lower.starts_with("aws:requesttag/") {
            tag(&self.request_tags, "aws:RequestTag/".len())
        } else if lower == "aws:tagkeys" {
            (!self.request_tags.is_empty()).then(|| self.request_tags.keys().cloned().collect())
        } else if lower == "ec2:createaction" {
            self.create_action.clone().map(|a| vec![a])
        } else {
            None
        }
    }
}

/// An ARN-ish example of one resource of `kind` (region us-east-1, account 123456789012).
pub fn example_arn(kind: &str) -> String {
    match kind {
        "*" => "*".into(),
        "image" => "arn:aws:ec2:us-east-1::image/ami-0123456789abcdef0".into(),
        "snapshot" => "arn:aws:ec2:us-east-1::snapshot/snap-0123456789abcdef0".into(),
        "parameter" => format!("arn:aws:ssm:us-east-1::parameter{}", super::AL2023_PARAMETER),
        other => format!("arn:aws:ec2:us-east-1:123456789012:{other}/x-0123456789abcdef0"),
    }
}

/// The authorizations EC2 makes for `call` by Flotilla for `cluster`: each resource with the
/// tags it has (owned: the owner tag) or is given (made), plus a `CreateTags` with
/// `ec2:CreateAction` for each resource tagged on creation.
pub fn requests(call: &Call, cluster: &str) -> Vec<Request> {
    let tags = |keys: &[&str]| -> BTreeMap<String, String> {
        keys.iter()
            .map(|k| (k.to_string(), if *k == call.owner.tag() { cluster.to_string() } else { "v".to_string() }))
            .collect()
    };
    let mut out = Vec::new();
    for (kind, u) in call.resources {
        let base = Request { action: call.action.into(), resource: example_arn(kind), ..Default::default() };
        match u {
            Use::Any | Use::Borrowed | Use::MadeUntagged => out.push(base),
            Use::Owned => out.push(Request { resource_tags: tags(&[call.owner.tag()]), ..base }),
            Use::Made(keys) => {
                out.push(Request {
                    action: "ec2:CreateTags".into(),
                    create_action: Some(call.action.trim_start_matches("ec2:").into()),
                    request_tags: tags(keys),
                    ..base.clone()
                });
                out.push(Request { request_tags: tags(keys), ..base });
            }
            Use::Retagged(keys) => out.push(Request { request_tags: tags(keys), ..base }),
        }
    }
    out
}

/// `*` any run of characters, `?` one; `ignore_case` for actions.
pub fn glob(pattern: &str, text: &str, ignore_case: bool) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = if ignore_case {
        (pattern.to_lowercase().chars().collect(), text.to_lowercase().chars().collect())
    } else {
        (pattern.chars().collect(), text.chars().collect())
    };
    // matches[j]: p[..i] matches t[..j].
    let mut matches = vec![false; t.len() + 1];
    matches[0] = true;
    for c in &p {
        let mut next = vec![false; t.len() + 1];
        for j in 0..=t.len() {
            next[j] = match c {
                '*' => matches[j] || (j > 0 && next[j - 1]),
                '?' => j > 0 && matches[j - 1],
                c => j > 0 && matches[j - 1] && t[j - 1] == *c,
            };
        }
        matches = next;
    }
    matches[t.len()]
}

/// A string or an array of strings, as policy elements are written.
pub fn strings(v: &Value) -> Vec<String> {
    match v {
        Value::String(s) => vec![s.clone()],
        Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
        Value::Bool(b) => vec![b.to_string()],
        _ => vec![],
    }
}

fn sid(s: &Value) -> String {
    s["Sid"].as_str().unwrap_or("(no Sid)").to_string()
}

fn statements(policy: &Value) -> Vec<&Value> {
    match &policy["Statement"] {
        Value::Array(a) => a.iter().collect(),
        s @ Value::Object(_) => vec![s],
        _ => vec![],
    }
}

fn condition_holds(s: &Value, r: &Request) -> Result<bool, Unsupported> {
    let Some(blocks) = s.get("Condition").and_then(Value::as_object) else { return Ok(true) };
    for (op, entries) in blocks {
        let unsupported = || Unsupported { sid: sid(s), what: format!("condition operator {op}") };
        let (set, rest) = match op.split_once(':') {
            Some((q @ ("ForAllValues" | "ForAnyValue"), rest)) => (Some(q), rest),
            Some(_) => return Err(unsupported()),
            None => (None, op.as_str()),
        };
        let (base, if_exists) = match rest.strip_suffix("IfExists") {
            Some(b) => (b, true),
            None => (rest, false),
        };
        let matches: fn(&str, &str) -> bool = match base {
            "StringEquals" | "Null" => |p, v| p == v,
            "StringLike" => |p, v| glob(p, v, false),
            _ => return Err(unsupported()),
        };
        for (key, wanted) in entries.as_object().ok_or_else(unsupported)? {
            let wanted = strings(wanted);
            let have = r.values(key);
            let ok = match (base, set, have) {
                ("Null", _, have) => wanted.iter().any(|w| (w == "true") == have.is_none()),
                (_, Some("ForAllValues"), None) => true,
                (_, Some("ForAllValues"), Some(h)) => h.iter().all(|v| wanted.iter().any(|p| matches(p, v))),
                (_, _, None) => if_exists,
                (_, _, Some(h)) => h.iter().any(|v| wanted.iter().any(|p| matches(p, v))),
            };
            if !ok {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Whether `policy` allows `r`: some Allow statement matches it (action, resource, every
/// condition) and no Deny statement does.
pub fn allows(policy: &Value, r: &Request) -> Result<bool, Unsupported> {
    let mut allowed = false;
    for s in statements(policy) {
        for element in ["NotAction", "NotResource", "Principal", "NotPrincipal"] {
            if s.get(element).is_some() {
                return Err(Unsupported { sid: sid(s), what: element.into() });
            }
        }
        let action = strings(&s["Action"]).iter().any(|a| glob(a, &r.action, true));
        let resource = strings(&s["Resource"]).iter().any(|p| glob(p, &r.resource, false));
        if !(action && resource && condition_holds(s, r)?) {
            continue;
        }
        match s["Effect"].as_str() {
            Some("Deny") => return Ok(false),
            Some("Allow") => allowed = true,
            other => return Err(Unsupported { sid: sid(s), what: format!("Effect {other:?}") }),
        }
    }
    Ok(allowed)
}

/// What [`check`] found wrong with a statement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    #[error(
        "{sid}: {action} on existing {kind} without `StringEquals` aws:ResourceTag/<owner tag> = exactly the \
         cluster's name"
    )]
    Unscoped { sid: String, action: String, kind: String },
    #[error(
        "{sid}: {action} makes {kind} without `StringEquals` aws:RequestTag/<owner tag> = exactly the cluster's name \
         and a `ForAllValues:StringEquals` aws:TagKeys limit to that owner's keys"
    )]
    UntaggedCreate { sid: String, action: String, kind: String },
    #[error(
        "{sid}: ec2:CreateTags on existing {kind} (no ec2:CreateAction condition) while a statement grants on \
         {kind}'s tags (or {kind} is not one Flotilla tags after creation): tagging would unlock it"
    )]
    TagsExisting { sid: String, kind: String },
    #[error(
        "{sid}: ec2:CreateTags without the owner tag = the cluster's name and an aws:TagKeys limit to Flotilla's keys"
    )]
    UnlimitedTags { sid: String },
    #[error("{sid}: ec2:CreateAction allows {action}, which creates nothing Flotilla tags")]
    ForeignCreateAction { sid: String, action: String },
    #[error("{sid}: condition {operator} {key} = {value} (an owner tag must be `StringEquals` the cluster's name)")]
    WrongScope { sid: String, operator: String, key: String, value: String },
    #[error("{sid}: {action} is not an action Flotilla calls (add it to iam::CALLS with what it touches)")]
    UnknownAction { sid: String, action: String },
    #[error("{sid}: {resource} is not a resource any of the statement's actions uses")]
    UnusedResource { sid: String, resource: String },
    #[error("{sid}: {element} grants everything but what it names; list what is allowed instead")]
    Inverted { sid: String, element: String },
}

/// The ARN resource type: `instance` of `arn:aws:ec2:*:*:instance/*`; `parameter` for SSM; `*`.
fn kind(resource: &str) -> String {
    if resource == "*" {
        return "*".into();
    }
    let tail = resource.splitn(6, ':').nth(5).unwrap_or_default();
    tail.split(['/', ':']).next().unwrap_or_default().to_string()
}

/// The owner whose tag `key` (a condition key) names, if any.
fn owner_of(key: &str) -> Option<Owner> {
    let tag = key.split_once('/')?.1;
    Owner::ALL.into_iter().find(|o| o.tag() == tag)
}

/// The owners whose tag the condition pins exactly to `cluster` under `StringEquals` for
/// `prefixes` (e.g. `aws:ResourceTag/`).
fn pinned(s: &Value, prefixes: &[&str], cluster: &str) -> Vec<Owner> {
    let Some(eq) = s["Condition"]["StringEquals"].as_object() else { return vec![] };
    eq.iter()
        .filter(|(k, _)| prefixes.iter().any(|p| k.to_ascii_lowercase().starts_with(&p.to_ascii_lowercase())))
        .filter(|(_, v)| strings(v) == [cluster])
        .filter_map(|(k, _)| owner_of(k))
        .collect()
}

/// The tag keys a `ForAllValues:StringEquals` aws:TagKeys limit allows, if there is one.
fn key_limit(s: &Value) -> Option<Vec<String>> {
    s["Condition"]["ForAllValues:StringEquals"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("aws:TagKeys"))
        .map(|(_, v)| strings(v))
}

/// Creation is tagged: the owner tag pinned in the request, keys limited to that owner's. The owner.
fn creation_tagged(s: &Value, cluster: &str) -> Option<Owner> {
    let limit = key_limit(s)?;
    pinned(s, &["aws:RequestTag/"], cluster).into_iter().find(|o| {
        let allowed = tag_keys(*o);
        limit.iter().all(|k| allowed.contains(&k.as_str()))
    })
}

/// Every owner-tag condition that is not `StringEquals` exactly `cluster`.
fn wrong_scopes(s: &Value, cluster: &str) -> Vec<Violation> {
    let Some(blocks) = s["Condition"].as_object() else { return vec![] };
    let mut out = Vec::new();
    for (op, entries) in blocks {
        for (key, v) in entries.as_object().into_iter().flatten() {
            if owner_of(key).is_some() && (op != "StringEquals" || strings(v) != [cluster]) {
                out.push(Violation::WrongScope {
                    sid: sid(s),
                    operator: op.clone(),
                    key: key.clone(),
                    value: v.to_string(),
                });
            }
        }
    }
    out
}

/// The structural rules (module doc) over `policy` rendered for `cluster`: empty when it holds.
pub fn check(policy: &Value, cluster: &str) -> Vec<Violation> {
    let all = statements(policy);
    let allow: Vec<&Value> = all.iter().copied().filter(|s| s["Effect"] == "Allow").collect();
    // Resource types some statement grants on by their tags: tagging one may unlock something.
    let keyed_on_tags: Vec<String> = allow
        .iter()
        .filter(|s| s["Condition"].to_string().to_ascii_lowercase().contains("resourcetag/"))
        .flat_map(|s| strings(&s["Resource"]).into_iter().map(|r| kind(&r)))
        .collect();
    let mut out = Vec::new();
    for s in allow {
        out.extend(wrong_scopes(s, cluster));
        for element in ["NotAction", "NotResource"].into_iter().filter(|e| s.get(*e).is_some()) {
            out.push(Violation::Inverted { sid: sid(s), element: element.into() });
        }
        let resources = strings(&s["Resource"]);
        let mut used = vec![false; resources.len()];
        for action in strings(&s["Action"]) {
            let calls: Vec<&Call> = CALLS.iter().filter(|c| c.action.eq_ignore_ascii_case(&action)).collect();
            if calls.is_empty() {
                out.push(Violation::UnknownAction { sid: sid(s), action });
                continue;
            }
            if action == "ec2:CreateTags" {
                out.extend(check_create_tags(s, &resources, &keyed_on_tags, cluster));
            }
            for (i, r) in resources.iter().enumerate() {
                let k = kind(r);
                let uses: Vec<(Owner, Use)> = calls
                    .iter()
                    .flat_map(|c| c.resources.iter().map(move |(t, u)| (c.owner, *t, *u)))
                    .filter(|(_, t, _)| k == "*" || *t == k)
                    .map(|(o, _, u)| (o, u))
                    .collect();
                // CreateTags also covers what the creating calls tag (their `Made` resources).
                let tagged_when_made = action == "ec2:CreateTags"
                    && CALLS
                        .iter()
                        .flat_map(|c| c.resources.iter())
                        .any(|(t, u)| (k == "*" || *t == k) && matches!(u, Use::Made(_)));
                used[i] |= !uses.is_empty() || tagged_when_made;
                let owners = |f: fn(&Use) -> bool| -> Vec<Owner> {
                    uses.iter().filter(|(_, u)| f(u)).map(|(o, _)| *o).collect()
                };
                let existing = owners(|u| matches!(u, Use::Owned));
                let scoped = pinned(s, &["aws:ResourceTag/", "ec2:ResourceTag/"], cluster);
                if !existing.is_empty() && !scoped.iter().any(|o| existing.contains(o)) {
                    out.push(Violation::Unscoped { sid: sid(s), action: action.clone(), kind: k.clone() });
                }
                let made = owners(|u| matches!(u, Use::Made(_)));
                if !made.is_empty() && !creation_tagged(s, cluster).is_some_and(|o| made.contains(&o)) {
                    out.push(Violation::UntaggedCreate { sid: sid(s), action: action.clone(), kind: k.clone() });
                }
            }
        }
        for (r, _) in resources.iter().zip(used).filter(|(_, u)| !u) {
            out.push(Violation::UnusedResource { sid: sid(s), resource: r.clone() });
        }
    }
    out
}

/// `ec2:CreateTags`: on creation only, or only on types Flotilla tags after creation and no
/// statement grants on by tag; always with the owner tag pinned and the keys limited.
fn check_create_tags(s: &Value, resources: &[String], keyed_on_tags: &[String], cluster: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    if creation_tagged(s, cluster).is_none() {
        out.push(Violation::UnlimitedTags { sid: sid(s) });
    }
    let create_actions: Vec<String> = s["Condition"]["StringEquals"]
        .as_object()
        .and_then(|m| m.iter().find(|(k, _)| k.eq_ignore_ascii_case("ec2:CreateAction")))
        .map(|(_, v)| strings(v))
        .unwrap_or_default();
    if !create_actions.is_empty() {
        let creating = creating_actions();
        for a in create_actions.iter().filter(|a| !creating.contains(&a.as_str())) {
            out.push(Violation::ForeignCreateAction { sid: sid(s), action: a.clone() });
        }
        return out;
    }
    let retagged = |k: &str| {
        CALLS
            .iter()
            .filter(|c| c.action == "ec2:CreateTags")
            .flat_map(|c| c.resources.iter())
            .any(|(t, u)| *t == k && matches!(u, Use::Retagged(_)))
    };
    for k in resources.iter().map(|r| kind(r)) {
        let unlocks = k == "*" || keyed_on_tags.iter().any(|t| *t == k || t == "*");
        if unlocks || !retagged(&k) {
            out.push(Violation::TagsExisting { sid: sid(s), kind: k });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs_match_like_iam() {
        assert!(glob("arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:us-east-1:1:instance/i-1", false));
        assert!(glob("arn:aws:ec2:*::image/*", "arn:aws:ec2:us-east-1::image/ami-1", false));
        assert!(!glob("arn:aws:ec2:*:*:instance/*", "arn:aws:ec2:us-east-1:1:volume/v-1", false));
        assert!(glob("ec2:Describe*", "EC2:describeimages", true));
        assert!(glob("a?c", "abc", false) && !glob("a?c", "ac", false));
        assert!(glob("*", "", false) && !glob("", "x", false));
    }

    #[test]
    fn conditions_follow_iams_semantics_for_missing_keys() {
        let stmt = |cond: Value| {
            let s = json!({"Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "*", "Condition": cond});
            json!({ "Statement": [s] })
        };
        let bare = Request { action: "ec2:CreateTags".into(), resource: "x".into(), ..Default::default() };
        let tagged = Request { request_tags: [("Name".into(), "n".into())].into(), ..bare.clone() };
        let keys = stmt(json!({"ForAllValues:StringEquals": {"aws:TagKeys": ["Name"]}}));
        // ForAllValues over no keys holds (which is why creation also pins the owner tag).
        assert_eq!(allows(&keys, &bare), Ok(true));
        assert_eq!(allows(&keys, &tagged), Ok(true));
        let foreign = Request { request_tags: [("Owner".into(), "x".into())].into(), ..bare.clone() };
        assert_eq!(allows(&keys, &foreign), Ok(false));
        let eq = stmt(json!({"StringEquals": {"aws:RequestTag/Name": "n"}}));
        assert_eq!(allows(&eq, &bare), Ok(false), "a missing key fails StringEquals");
        assert_eq!(allows(&eq, &tagged), Ok(true));
        let if_exists = stmt(json!({"StringEqualsIfExists": {"aws:RequestTag/Name": "m"}}));
        assert_eq!(allows(&if_exists, &bare), Ok(true));
        assert_eq!(allows(&if_exists, &tagged), Ok(false));
        let null = stmt(json!({"Null": {"ec2:CreateAction": "true"}}));
        assert_eq!(allows(&null, &bare), Ok(true));
        let like = stmt(json!({"StringLike": {"aws:RequestTag/Name": "*"}}));
        assert_eq!(allows(&like, &tagged), Ok(true));
        let odd = stmt(json!({"DateGreaterThan": {"aws:CurrentTime": "2020-01-01T00:00:00Z"}}));
        assert!(allows(&odd, &bare).is_err());
        let deny = json!({"Statement": [
            {"Effect": "Allow", "Action": "ec2:*", "Resource": "*"},
            {"Effect": "Deny", "Action": "ec2:CreateTags", "Resource": "*"}
        ]});
        assert_eq!(allows(&deny, &bare), Ok(false));
    }

    #[test]
    fn the_structural_check_names_each_kind_of_overreach() {
        let cluster = "prod";
        let cases = [
            (json!({"Action": "ec2:TerminateInstances", "Resource": "*"}), "Unscoped"),
            (
                json!({"Action": "ec2:StopInstances", "Resource": "arn:aws:ec2:*:*:instance/*",
                       "Condition": {"StringEquals": {"aws:ResourceTag/flotilla:cluster": "staging"}}}),
                "WrongScope",
            ),
            (
                json!({"Action": "ec2:RunInstances", "Resource": "arn:aws:ec2:*:*:instance/*",
                       "Condition": {"StringEquals": {"aws:RequestTag/flotilla:cluster": "prod"}}}),
                "UntaggedCreate",
            ),
            (
                json!({"Action": "ec2:CreateTags", "Resource": "*",
                       "Condition": {"StringEquals": {"ec2:CreateAction": "CreateVolume",
                                                       "aws:RequestTag/flotilla:cluster": "prod"},
                                     "ForAllValues:StringEquals": {"aws:TagKeys": ["Name", "flotilla:cluster"]}}}),
                "ForeignCreateAction",
            ),
            (json!({"Action": "ec2:CreateTags", "Resource": "arn:aws:ec2:*::snapshot/*"}), "UnlimitedTags"),
            (json!({"Action": "ec2:DeleteVolume", "Resource": "*"}), "UnknownAction"),
            (json!({"Action": "ec2:DescribeImages", "Resource": "arn:aws:ec2:*::image/*"}), "UnusedResource"),
            (json!({"NotAction": "iam:*", "Resource": "*"}), "Inverted"),
        ];
        for (mut statement, kind) in cases {
            statement["Sid"] = json!("S");
            statement["Effect"] = json!("Allow");
            let found = check(&json!({ "Statement": [statement] }), cluster);
            assert!(found.iter().any(|v| format!("{v:?}").starts_with(kind)), "{kind}: {found:#?}");
        }
    }

    #[test]
    fn resource_kinds_are_read_from_arns() {
        assert_eq!(kind("arn:aws:ec2:*:*:instance/*"), "instance");
        assert_eq!(kind("arn:aws:ec2:*::snapshot/*"), "snapshot");
        assert_eq!(kind("arn:aws:ssm:*::parameter/aws/service/x"), "parameter");
        assert_eq!(kind("*"), "*");
    }
}
