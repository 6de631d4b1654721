//! The SQL of the query API over the JSONB value of v1 tables, written on the fly with its
//! parameters collected beside it.

use tokio_postgres::types::ToSql;

use crate::StateError;
use crate::query::Filter;

/// Collects the parameters of a query whose SQL is written on the fly.
#[derive(Default)]
pub(super) struct SqlBuilder {
    pub(super) params: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl SqlBuilder {
    pub(super) fn param(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.params.push(Box::new(value));
        format!("${}", self.params.len())
    }

    /// A dotted path (`person.org`) as a `text[]` parameter for `#>`.
    pub(super) fn path(&mut self, dotted: &str) -> String {
        let parts: Vec<String> = dotted.split('.').map(str::to_string).collect();
        format!("{}::text[]", self.param(parts))
    }

    pub(super) fn json(&mut self, value: &serde_json::Value) -> String {
        format!("{}::text::jsonb", self.param(value.to_string()))
    }

    pub(super) fn filter(&mut self, filter: &Filter) -> Result<String, StateError> {
        Ok(match filter {
            Filter::Eq(path, value) => {
                let path = self.path(path);
                let value = self.json(value);
                format!("(value #> {path}) = {value}")
            }
            Filter::In(path, values) => {
                if values.is_empty() {
                    return Ok("false".into());
                }
                let path = self.path(path);
                let list: Vec<String> = values.iter().map(|v| self.json(v)).collect();
                format!("(value #> {path}) IN ({})", list.join(", "))
            }
            Filter::And(all) | Filter::Or(all) => {
                let joiner = if matches!(filter, Filter::And(_)) {
                    " AND "
                } else {
                    " OR "
                };
                let parts = all
                    .iter()
                    .map(|f| self.filter(f))
                    .collect::<Result<Vec<_>, _>>()?;
                format!("({})", parts.join(joiner))
            }
        })
    }
}
