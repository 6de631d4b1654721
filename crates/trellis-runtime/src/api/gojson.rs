//! Reading JSON the way Dapr's Go runtime does. Go's `encoding/json` matches an object's
//! keys to struct fields ignoring case (preferring an exact match), and SDKs rely on it:
//! the JavaScript SDK sends bulk-publish entries as `entryID`, which Dapr reads as
//! `entryId`. serde matches exactly, so each wire type says which keys it has at which
//! level ([`GoJson::fold`]) and [`from_slice`] respells the keys before serde reads them.
//!
//! Only the keys of the wire types are touched, never the data inside them (a state value,
//! an event, a metadata map keep their keys as sent).

use serde::de::DeserializeOwned;
use serde_json::Value;

/// A wire type read with Go's key matching.
pub trait GoJson: DeserializeOwned {
    /// Respells the keys of `value` (this type as JSON, possibly malformed) to the
    /// spelling serde expects, at this level and in the nested wire types.
    fn fold(value: &mut Value);
}

impl<T: GoJson> GoJson for Vec<T> {
    fn fold(value: &mut Value) {
        if let Value::Array(items) = value {
            items.iter_mut().for_each(T::fold);
        }
    }
}

impl<T: GoJson> GoJson for Option<T> {
    fn fold(value: &mut Value) {
        T::fold(value);
    }
}

/// Free-form JSON (a query, a state value): its keys are data, kept as sent.
impl GoJson for Value {
    fn fold(_: &mut Value) {}
}

/// Parses `bytes` as `T`, matching keys as Go does.
pub fn from_slice<T: GoJson>(bytes: &[u8]) -> serde_json::Result<T> {
    let mut value: Value = serde_json::from_slice(bytes)?;
    T::fold(&mut value);
    serde_json::from_value(value)
}

/// Respells the keys of the object `value` that equal one of `fields` ignoring ASCII case
/// to that field's spelling. When both spellings are there, the exact one wins (Go would
/// take whichever comes last). Anything but an object is left alone (serde reports it).
pub fn fold_keys(value: &mut Value, fields: &[&str]) {
    let Value::Object(map) = value else {
        return;
    };
    let respell: Vec<(String, &str)> = map
        .keys()
        .filter(|k| !fields.contains(&k.as_str()))
        .filter_map(|k| {
            fields
                .iter()
                .find(|f| f.eq_ignore_ascii_case(k))
                .map(|f| (k.clone(), *f))
        })
        .collect();
    for (from, to) in respell {
        if let Some(v) = map.remove(&from) {
            map.entry(to.to_string()).or_insert(v);
        }
    }
}

/// Folds the nested wire type `T` found under `key` (already respelled) in `value`.
pub fn fold_field<T: GoJson>(value: &mut Value, key: &str) {
    if let Some(inner) = value.get_mut(key) {
        T::fold(inner);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Inner {
        content_type: Option<String>,
    }

    #[derive(Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "camelCase")]
    struct Outer {
        entry_id: String,
        inner: Option<Inner>,
        data: Value,
    }

    impl GoJson for Inner {
        fn fold(v: &mut Value) {
            fold_keys(v, &["contentType"]);
        }
    }

    impl GoJson for Outer {
        fn fold(v: &mut Value) {
            fold_keys(v, &["entryId", "inner", "data"]);
            fold_field::<Inner>(v, "inner");
        }
    }

    #[test]
    fn keys_match_ignoring_case_but_data_is_untouched() {
        let body = json!([{"ENTRYID": "a", "Inner": {"contenttype": "t"}, "DATA": {"EntryID": 1}}]);
        let got: Vec<Outer> = from_slice(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            got,
            [Outer {
                entry_id: "a".into(),
                inner: Some(Inner {
                    content_type: Some("t".into())
                }),
                data: json!({"EntryID": 1}),
            }]
        );
    }

    #[test]
    fn an_exact_key_wins() {
        let body = br#"{"entryID": "folded", "entryId": "exact", "data": null}"#;
        let got: Outer = from_slice(body).unwrap();
        assert_eq!(got.entry_id, "exact");
        assert!(from_slice::<Outer>(b"[1]").is_err());
        assert!(from_slice::<Outer>(b"{").is_err());
    }
}
