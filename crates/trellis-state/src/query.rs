//! The state query language (Dapr's `/v1.0-alpha1/state/{store}/query`): a filter tree of
//! `EQ`, `IN`, `AND`, `OR` over fields of JSON values, a sort, and paging.
//!
//! Parsing from JSON happens here so that every backend sees the same validated [`Query`];
//! [`Filter::matches`] and [`compare`] evaluate it in memory for stores that do not
//! translate it to their own query language.

use std::cmp::Ordering;

use bytes::Bytes;
use serde_json::Value;

use crate::StateError;

#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Eq(String, Value),
    In(String, Vec<Value>),
    And(Vec<Filter>),
    Or(Vec<Filter>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    /// A dotted path into the value, e.g. `person.org`.
    pub key: String,
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Query {
    pub filter: Option<Filter>,
    pub sort: Vec<Sort>,
    pub limit: Option<usize>,
    /// Opaque continuation token from a previous page.
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueryResult {
    pub key: String,
    pub data: Bytes,
    pub etag: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryResponse {
    pub results: Vec<QueryResult>,
    /// Set when more results may follow.
    pub token: Option<String>,
}

fn invalid(msg: impl Into<String>) -> StateError {
    StateError::InvalidRequest(msg.into())
}

impl Query {
    /// Parses Dapr's query JSON: `{"filter": {...}, "sort": [{"key", "order"}], "page":
    /// {"limit", "token"}}`.
    pub fn from_json(value: &Value) -> Result<Self, StateError> {
        let obj = value
            .as_object()
            .ok_or_else(|| invalid("query must be a JSON object"))?;
        for key in obj.keys() {
            if !matches!(key.as_str(), "filter" | "sort" | "page") {
                return Err(invalid(format!(
                    "unknown query field {key:?}; expected filter, sort, page"
                )));
            }
        }
        let filter = match obj.get("filter") {
            None | Some(Value::Null) => None,
            Some(f) if f.as_object().is_some_and(|o| o.is_empty()) => None,
            Some(f) => Some(Filter::from_json(f)?),
        };
        let mut sort = Vec::new();
        if let Some(s) = obj.get("sort") {
            let list = s
                .as_array()
                .ok_or_else(|| invalid("sort must be a list of {key, order}"))?;
            for entry in list {
                let key = entry
                    .get("key")
                    .and_then(Value::as_str)
                    .ok_or_else(|| invalid("every sort entry needs a key"))?;
                let descending = match entry.get("order").and_then(Value::as_str) {
                    None => false,
                    Some(o) if o.eq_ignore_ascii_case("ASC") => false,
                    Some(o) if o.eq_ignore_ascii_case("DESC") => true,
                    Some(o) => return Err(invalid(format!("sort order {o:?} is not ASC or DESC"))),
                };
                sort.push(Sort {
                    key: key.to_string(),
                    descending,
                });
            }
        }
        let (mut limit, mut token) = (None, None);
        if let Some(page) = obj.get("page") {
            if let Some(l) = page.get("limit") {
                let l = l
                    .as_u64()
                    .ok_or_else(|| invalid("page.limit must be a non-negative integer"))?;
                limit = (l > 0).then_some(l as usize);
            }
            if let Some(t) = page.get("token") {
                let t = t
                    .as_str()
                    .ok_or_else(|| invalid("page.token must be a string"))?;
                token = (!t.is_empty()).then(|| t.to_string());
            }
        }
        Ok(Query {
            filter,
            sort,
            limit,
            token,
        })
    }
}

impl Filter {
    fn from_json(value: &Value) -> Result<Self, StateError> {
        let obj = value
            .as_object()
            .filter(|o| o.len() == 1)
            .ok_or_else(|| invalid("a filter is an object with exactly one of EQ, IN, AND, OR"))?;
        let (op, arg) = obj.iter().next().ok_or_else(|| invalid("empty filter"))?;
        match op.as_str() {
            "EQ" | "IN" => {
                let field = arg
                    .as_object()
                    .filter(|o| o.len() == 1)
                    .ok_or_else(|| invalid(format!("{op} takes an object with one field")))?;
                let (name, v) = field.iter().next().ok_or_else(|| invalid("empty field"))?;
                if op == "EQ" {
                    Ok(Filter::Eq(name.clone(), v.clone()))
                } else {
                    let list = v
                        .as_array()
                        .ok_or_else(|| invalid(format!("IN {name}: expected a list of values")))?;
                    Ok(Filter::In(name.clone(), list.clone()))
                }
            }
            "AND" | "OR" => {
                let list = arg
                    .as_array()
                    .filter(|l| l.len() >= 2)
                    .ok_or_else(|| invalid(format!("{op} takes a list of at least two filters")))?;
                let inner = list
                    .iter()
                    .map(Filter::from_json)
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(if op == "AND" {
                    Filter::And(inner)
                } else {
                    Filter::Or(inner)
                })
            }
            other => Err(invalid(format!(
                "unknown filter operation {other:?}; supported: EQ, IN, AND, OR"
            ))),
        }
    }

    /// Whether a JSON value passes the filter.
    pub fn matches(&self, value: &Value) -> bool {
        match self {
            Filter::Eq(path, expected) => field(value, path).is_some_and(|v| v == expected),
            Filter::In(path, options) => field(value, path).is_some_and(|v| options.contains(v)),
            Filter::And(all) => all.iter().all(|f| f.matches(value)),
            Filter::Or(any) => any.iter().any(|f| f.matches(value)),
        }
    }
}

/// The value at a dotted path (`person.org`); a numeric segment indexes an array.
pub fn field<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = value;
    for part in path.split('.') {
        current = match current {
            Value::Object(map) => map.get(part)?,
            Value::Array(items) => items.get(part.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(current)
}

/// Orders two values by the sort keys; missing fields sort first, numbers numerically,
/// strings lexically, and values of different kinds by kind.
pub fn compare(a: &Value, b: &Value, sort: &[Sort]) -> Ordering {
    for s in sort {
        let ord = compare_values(field(a, &s.key), field(b, &s.key));
        let ord = if s.descending { ord.reverse() } else { ord };
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

fn compare_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: &Value) -> u8 {
        match v {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Number(_) => 2,
            Value::String(_) => 3,
            Value::Array(_) => 4,
            Value::Object(_) => 5,
        }
    }
    match (a, b) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(a), Some(b)) => match (a, b) {
            (Value::Number(x), Value::Number(y)) => x
                .as_f64()
                .partial_cmp(&y.as_f64())
                .unwrap_or(Ordering::Equal),
            (Value::String(x), Value::String(y)) => x.cmp(y),
            (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
            _ => rank(a).cmp(&rank(b)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_and_evaluates() {
        let q = Query::from_json(&json!({
            "filter": {"OR": [{"EQ": {"person.org": "Dev Ops"}}, {"AND": [{"EQ": {"person.org": "Finance"}}, {"IN": {"state": ["CA", "WA"]}}]}]},
            "sort": [{"key": "state", "order": "DESC"}, {"key": "person.id"}],
            "page": {"limit": 3}
        }))
        .unwrap();
        assert_eq!(q.limit, Some(3));
        assert_eq!(q.sort.len(), 2);
        let f = q.filter.unwrap();
        assert!(f.matches(&json!({"person": {"org": "Dev Ops"}})));
        assert!(f.matches(&json!({"person": {"org": "Finance"}, "state": "WA"})));
        assert!(!f.matches(&json!({"person": {"org": "Finance"}, "state": "NY"})));
        assert!(!f.matches(&json!("just a string")));
    }

    #[test]
    fn rejects_what_it_does_not_know() {
        for bad in [
            json!({"filter": {"GT": {"a": 1}}}),
            json!({"filter": {"EQ": {"a": 1}, "IN": {"b": []}}}),
            json!({"filter": {"AND": [{"EQ": {"a": 1}}]}}),
            json!({"sort": [{"order": "ASC"}]}),
            json!({"sort": [{"key": "a", "order": "UP"}]}),
            json!({"page": {"limit": -1}}),
            json!({"select": []}),
            json!([1]),
        ] {
            assert!(Query::from_json(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sorts() {
        let sort = vec![Sort {
            key: "n".into(),
            descending: false,
        }];
        assert_eq!(
            compare(&json!({"n": 2}), &json!({"n": 10}), &sort),
            Ordering::Less
        );
        assert_eq!(compare(&json!({}), &json!({"n": 1}), &sort), Ordering::Less);
        let desc = vec![Sort {
            key: "s".into(),
            descending: true,
        }];
        assert_eq!(
            compare(&json!({"s": "a"}), &json!({"s": "b"}), &desc),
            Ordering::Greater
        );
    }
}
