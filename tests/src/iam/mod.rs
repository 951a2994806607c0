//! A small IAM policy evaluator: moto does not enforce IAM, so the e2e
//! tests prove with this that each call the agent made is allowed by the
//! policy `runner-userdata iam-policy` prints, condition keys included.
//!
//! It implements identity-policy evaluation as AWS documents it, for the
//! elements that policy uses: Allow and Deny statements (an explicit Deny
//! wins), `Action` and `Resource` with `*` / `?` wildcards (ARNs matched
//! component by component), policy variables (`${key}`) from the request
//! context, and the condition operators StringEquals, StringNotEquals,
//! StringEqualsIgnoreCase, StringLike, StringNotLike, ArnEquals, ArnLike,
//! ArnNotEquals, ArnNotLike, Bool and Null, with the ForAllValues: /
//! ForAnyValue: qualifiers and the IfExists suffix. Anything else in a
//! policy (NotAction, Principal, numeric or date operators, `${key, 'x'}`)
//! panics: nothing it does not understand can read as "allowed".

mod calls;
mod pattern;
mod stack;

pub use calls::{authorizations, Origin};

use pattern::Pattern;
use serde_json::Value;
use std::collections::BTreeMap;

/// One authorization IAM makes for a call: an action on a resource, in a
/// request context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub action: String,
    pub resource: String,
    /// Condition keys, lower-cased (IAM compares key names without case),
    /// → their values; a multivalued key has several.
    pub context: BTreeMap<String, Vec<String>>,
}

impl Request {
    pub fn new(action: &str, resource: &str) -> Request {
        Request {
            action: action.to_owned(),
            resource: resource.to_owned(),
            context: BTreeMap::new(),
        }
    }

    /// Adds `key` with `values` to the context.
    pub fn with<I, S>(mut self, key: &str, values: I) -> Request
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.context
            .entry(key.to_ascii_lowercase())
            .or_default()
            .extend(values.into_iter().map(Into::into));
        self
    }

    fn values(&self, key: &str) -> Option<&[String]> {
        self.context
            .get(&key.to_ascii_lowercase())
            .map(Vec::as_slice)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// By the statement with this Sid (or its index, without one).
    Allowed(String),
    ExplicitDeny(String),
    ImplicitDeny,
}

/// IAM's answer for `request` under the identity policy `policy`.
pub fn evaluate(policy: &Value, request: &Request) -> Decision {
    let statements = match &policy["Statement"] {
        Value::Array(list) => list.clone(),
        single @ Value::Object(_) => vec![single.clone()],
        other => panic!("policy Statement is {other}"),
    };
    let mut allowed = None;
    for (i, statement) in statements.iter().enumerate() {
        let sid = statement["Sid"]
            .as_str()
            .map_or_else(|| i.to_string(), str::to_owned);
        if !applies(statement, request) {
            continue;
        }
        match statement["Effect"].as_str() {
            Some("Deny") => return Decision::ExplicitDeny(sid),
            Some("Allow") => {
                allowed.get_or_insert(sid);
            }
            other => panic!("statement {sid}: Effect {other:?}"),
        }
    }
    allowed.map_or(Decision::ImplicitDeny, Decision::Allowed)
}

fn applies(statement: &Value, request: &Request) -> bool {
    let object = statement.as_object().expect("a statement is an object");
    for key in object.keys() {
        assert!(
            matches!(
                key.as_str(),
                "Sid" | "Effect" | "Action" | "Resource" | "Condition"
            ),
            "unsupported statement element {key}"
        );
    }
    let action = strings(&statement["Action"]).iter().any(|a| {
        Pattern::literal_wildcards(&a.to_ascii_lowercase())
            .matches(&request.action.to_ascii_lowercase())
    });
    let resource = strings(&statement["Resource"]).iter().any(|r| {
        Pattern::with_variables(r, request).is_some_and(|p| p.matches_arn(&request.resource))
    });
    action && resource && conditions_hold(&statement["Condition"], request)
}

/// A string or a list of them (numbers and booleans as JSON writes them).
fn strings(value: &Value) -> Vec<String> {
    match value {
        Value::Null => vec![],
        Value::String(s) => vec![s.clone()],
        Value::Bool(_) | Value::Number(_) => vec![value.to_string()],
        Value::Array(list) => list.iter().flat_map(strings).collect(),
        Value::Object(_) => panic!("expected strings, got {value}"),
    }
}

/// Every operator block holds, and within one, every key (AND); a key
/// holds when the request's value matches any of the policy's (OR).
fn conditions_hold(condition: &Value, request: &Request) -> bool {
    let Some(blocks) = condition.as_object() else {
        assert!(condition.is_null(), "Condition is {condition}");
        return true;
    };
    blocks.iter().all(|(operator, keys)| {
        let operator = Operator::parse(operator);
        let keys = keys.as_object().expect("a condition block is an object");
        keys.iter()
            .all(|(key, wanted)| operator.holds(request.values(key), &strings(wanted), request))
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Set {
    Single,
    ForAllValues,
    ForAnyValue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    StringEquals,
    StringEqualsIgnoreCase,
    StringLike,
    Arn,
    Bool,
    Null,
}

#[derive(Debug, Clone, Copy)]
struct Operator {
    set: Set,
    compare: Compare,
    negated: bool,
    if_exists: bool,
}

impl Operator {
    fn parse(text: &str) -> Operator {
        let (set, rest) = match text.split_once(':') {
            Some(("ForAllValues", rest)) => (Set::ForAllValues, rest),
            Some(("ForAnyValue", rest)) => (Set::ForAnyValue, rest),
            Some(_) => panic!("unsupported condition operator {text}"),
            None => (Set::Single, text),
        };
        let (base, if_exists) = match rest.strip_suffix("IfExists") {
            Some(base) => (base, true),
            None => (rest, false),
        };
        let (compare, negated) = match base {
            "StringEquals" => (Compare::StringEquals, false),
            "StringNotEquals" => (Compare::StringEquals, true),
            "StringEqualsIgnoreCase" => (Compare::StringEqualsIgnoreCase, false),
            "StringLike" => (Compare::StringLike, false),
            "StringNotLike" => (Compare::StringLike, true),
            "ArnEquals" | "ArnLike" => (Compare::Arn, false),
            "ArnNotEquals" | "ArnNotLike" => (Compare::Arn, true),
            "Bool" => (Compare::Bool, false),
            "Null" => (Compare::Null, false),
            _ => panic!("unsupported condition operator {text}"),
        };
        assert!(
            !(compare == Compare::Null && (set != Set::Single || if_exists)),
            "unsupported condition operator {text}"
        );
        assert!(
            !(set != Set::Single && if_exists),
            "unsupported condition operator {text}"
        );
        Operator {
            set,
            compare,
            negated,
            if_exists,
        }
    }

    fn holds(self, present: Option<&[String]>, wanted: &[String], request: &Request) -> bool {
        let present = present.filter(|v| !v.is_empty());
        if self.compare == Compare::Null {
            let want_absent = match wanted {
                [w] if w == "true" => true,
                [w] if w == "false" => false,
                _ => panic!("Null takes \"true\" or \"false\", got {wanted:?}"),
            };
            return present.is_none() == want_absent;
        }
        // One request value against the policy's values, negation applied.
        let one =
            |value: &String| wanted.iter().any(|w| self.matches(w, value, request)) != self.negated;
        match (self.set, present) {
            // ForAllValues holds for an absent key (nothing fails it): a
            // policy must pair it with Null, as the generator's does.
            (Set::ForAllValues, None) => true,
            (Set::ForAllValues, Some(values)) => values.iter().all(one),
            (Set::ForAnyValue, None) => false,
            (Set::ForAnyValue, Some(values)) => values.iter().any(one),
            // Absent: IfExists holds; so do the negated operators (nothing
            // equals), the others do not.
            (Set::Single, None) => self.if_exists || self.negated,
            (Set::Single, Some([value])) => one(value),
            (Set::Single, Some(values)) => {
                panic!("{values:?}: a multivalued key needs ForAllValues or ForAnyValue")
            }
        }
    }

    fn matches(self, wanted: &str, value: &str, request: &Request) -> bool {
        match self.compare {
            Compare::Bool => wanted.eq_ignore_ascii_case(value),
            Compare::Null => unreachable!("handled in holds"),
            // Policy variables work in string and ARN conditions; one
            // without a value in the request matches nothing.
            _ => match Pattern::with_variables(wanted, request) {
                None => false,
                Some(pattern) => match self.compare {
                    Compare::StringEquals => pattern.equals(value, false),
                    Compare::StringEqualsIgnoreCase => pattern.equals(value, true),
                    Compare::StringLike => pattern.matches(value),
                    _ => pattern.matches_arn(value),
                },
            },
        }
    }
}
