//! The subset of CEL that Dapr users write in subscription routing rules (`match`).
//!
//! Supported: `event.<field>...` paths, string/number/bool/null literals, `==`, `!=`, `<`,
//! `<=`, `>`, `>=`, `&&`, `||`, `!`, parentheses, `has(event.<path>)`, and the string
//! methods `startsWith`, `endsWith`, `contains`. Anything else is rejected when the rule is
//! loaded, with the reason, so a rule never silently fails to match because Trellis did not
//! understand it.
//!
//! Evaluation follows CEL where the subset can tell: a missing field or a comparison of
//! mismatched types is an error, and an erroring rule does not match.

use serde_json::Value;

/// A parsed `match` expression.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr(Node);

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "unsupported routing expression {expr:?}: {reason} (supported: event.<field> paths, string/number/bool literals, ==, !=, <, <=, >, >=, &&, ||, !, parentheses, has(event.x), startsWith, endsWith, contains)"
)]
pub struct CelError {
    pub expr: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Lit(Lit),
    /// `event.a.b`: the path below `event` (empty = the whole event).
    Path(Vec<String>),
    Has(Vec<String>),
    Not(Box<Node>),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    Method(StrMethod, Box<Node>, Box<Node>),
}

#[derive(Debug, Clone, PartialEq)]
enum Lit {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrMethod {
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num(f64),
    Op(&'static str),
}

impl Expr {
    pub fn parse(src: &str) -> Result<Self, CelError> {
        let err = |reason: String| CelError {
            expr: src.to_string(),
            reason,
        };
        let toks = lex(src).map_err(err)?;
        let mut p = Parser { toks, pos: 0 };
        let node = p.or().map_err(err)?;
        if let Some(t) = p.toks.get(p.pos) {
            return Err(err(format!("unexpected {t:?} after the expression")));
        }
        Ok(Expr(node))
    }

    /// True when the expression evaluates to `true` for `event`; errors (missing fields,
    /// mismatched types, a non-boolean result) count as no match.
    pub fn matches(&self, event: &Value) -> bool {
        matches!(eval(&self.0, event), Ok(V::Bool(true)))
    }
}

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = src.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            toks.push(Tok::Ident(chars[start..i].iter().collect()));
        } else if c.is_ascii_digit()
            || (c == '-'
                && chars.get(i + 1).is_some_and(char::is_ascii_digit)
                && !prev_is_value(&toks))
        {
            let start = i;
            i += 1;
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            let text: String = chars[start..i].iter().collect();
            let n = text
                .parse::<f64>()
                .map_err(|_| format!("bad number {text:?}"))?;
            toks.push(Tok::Num(n));
        } else if c == '"' || c == '\'' {
            let quote = c;
            i += 1;
            let mut s = String::new();
            loop {
                match chars.get(i) {
                    None => return Err("unterminated string".into()),
                    Some(&ch) if ch == quote => {
                        i += 1;
                        break;
                    }
                    Some('\\') => {
                        let esc = chars.get(i + 1).ok_or("unterminated string")?;
                        s.push(match esc {
                            'n' => '\n',
                            't' => '\t',
                            'r' => '\r',
                            '\\' | '"' | '\'' => *esc,
                            other => return Err(format!("unsupported escape \\{other}")),
                        });
                        i += 2;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            toks.push(Tok::Str(s));
        } else {
            let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
            let op = ["==", "!=", "<=", ">=", "&&", "||"]
                .into_iter()
                .find(|o| *o == two);
            if let Some(op) = op {
                toks.push(Tok::Op(op));
                i += 2;
                continue;
            }
            let one = ["<", ">", "!", "(", ")", ".", ","]
                .into_iter()
                .find(|o| o.starts_with(c));
            match one {
                Some(op) => {
                    toks.push(Tok::Op(op));
                    i += 1;
                }
                None => return Err(format!("unexpected character {c:?}")),
            }
        }
    }
    Ok(toks)
}

/// A `-` after a value is subtraction (unsupported), not a negative number.
fn prev_is_value(toks: &[Tok]) -> bool {
    matches!(
        toks.last(),
        Some(Tok::Ident(_) | Tok::Str(_) | Tok::Num(_) | Tok::Op(")"))
    )
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek_op(&self, op: &str) -> bool {
        matches!(self.toks.get(self.pos), Some(Tok::Op(o)) if *o == op)
    }

    fn expect_op(&mut self, op: &str) -> Result<(), String> {
        if self.peek_op(op) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!(
                "expected {op:?}, found {}",
                self.toks
                    .get(self.pos)
                    .map_or("the end".to_string(), |t| format!("{t:?}"))
            ))
        }
    }

    fn or(&mut self) -> Result<Node, String> {
        let mut left = self.and()?;
        while self.peek_op("||") {
            self.pos += 1;
            left = Node::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Node, String> {
        let mut left = self.unary()?;
        while self.peek_op("&&") {
            self.pos += 1;
            left = Node::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn unary(&mut self) -> Result<Node, String> {
        if self.peek_op("!") {
            self.pos += 1;
            return Ok(Node::Not(Box::new(self.unary()?)));
        }
        self.comparison()
    }

    fn comparison(&mut self) -> Result<Node, String> {
        let left = self.postfix()?;
        let op = match self.toks.get(self.pos) {
            Some(Tok::Op("==")) => CmpOp::Eq,
            Some(Tok::Op("!=")) => CmpOp::Ne,
            Some(Tok::Op("<")) => CmpOp::Lt,
            Some(Tok::Op("<=")) => CmpOp::Le,
            Some(Tok::Op(">")) => CmpOp::Gt,
            Some(Tok::Op(">=")) => CmpOp::Ge,
            _ => return Ok(left),
        };
        self.pos += 1;
        let right = self.postfix()?;
        Ok(Node::Cmp(op, Box::new(left), Box::new(right)))
    }

    fn postfix(&mut self) -> Result<Node, String> {
        let mut node = self.primary()?;
        while self.peek_op(".") {
            self.pos += 1;
            let Some(Tok::Ident(name)) = self.toks.get(self.pos).cloned() else {
                return Err("expected a field or method name after '.'".into());
            };
            self.pos += 1;
            if self.peek_op("(") {
                let method = match name.as_str() {
                    "startsWith" => StrMethod::StartsWith,
                    "endsWith" => StrMethod::EndsWith,
                    "contains" => StrMethod::Contains,
                    other => return Err(format!("function {other}() is not supported")),
                };
                self.pos += 1;
                let arg = self.or()?;
                self.expect_op(")")?;
                node = Node::Method(method, Box::new(node), Box::new(arg));
            } else {
                match &mut node {
                    Node::Path(path) => path.push(name),
                    _ => return Err(format!("field .{name} on something that is not event")),
                }
            }
        }
        Ok(node)
    }

    fn primary(&mut self) -> Result<Node, String> {
        let tok = self
            .toks
            .get(self.pos)
            .cloned()
            .ok_or("the expression ends too early")?;
        self.pos += 1;
        match tok {
            Tok::Str(s) => Ok(Node::Lit(Lit::Str(s))),
            Tok::Num(n) => Ok(Node::Lit(Lit::Num(n))),
            Tok::Op("(") => {
                let inner = self.or()?;
                self.expect_op(")")?;
                Ok(inner)
            }
            Tok::Ident(id) => match id.as_str() {
                "true" => Ok(Node::Lit(Lit::Bool(true))),
                "false" => Ok(Node::Lit(Lit::Bool(false))),
                "null" => Ok(Node::Lit(Lit::Null)),
                "event" => Ok(Node::Path(Vec::new())),
                "has" => {
                    self.expect_op("(")?;
                    let arg = self.postfix()?;
                    self.expect_op(")")?;
                    match arg {
                        Node::Path(p) if !p.is_empty() => Ok(Node::Has(p)),
                        _ => Err("has() takes a field of event, like has(event.data.x)".into()),
                    }
                }
                other => Err(format!(
                    "unknown name {other:?}: expressions start from event"
                )),
            },
            Tok::Op(op) => Err(format!("unexpected {op:?}")),
        }
    }
}

/// A value during evaluation.
#[derive(Debug, Clone, PartialEq)]
enum V {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    /// An object or array from the event, only good for `==`/`!=`.
    Other(Value),
}

fn from_json(v: &Value) -> V {
    match v {
        Value::Null => V::Null,
        Value::Bool(b) => V::Bool(*b),
        Value::Number(n) => n.as_f64().map_or(V::Other(v.clone()), V::Num),
        Value::String(s) => V::Str(s.clone()),
        other => V::Other(other.clone()),
    }
}

fn lookup<'a>(event: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(event, |v, k| v.as_object()?.get(k))
}

fn eval(node: &Node, event: &Value) -> Result<V, ()> {
    Ok(match node {
        Node::Lit(Lit::Null) => V::Null,
        Node::Lit(Lit::Bool(b)) => V::Bool(*b),
        Node::Lit(Lit::Num(n)) => V::Num(*n),
        Node::Lit(Lit::Str(s)) => V::Str(s.clone()),
        Node::Path(p) => from_json(lookup(event, p).ok_or(())?),
        Node::Has(p) => V::Bool(lookup(event, p).is_some()),
        Node::Not(n) => match eval(n, event)? {
            V::Bool(b) => V::Bool(!b),
            _ => return Err(()),
        },
        // CEL's && and || absorb an error on one side when the other decides the result.
        Node::And(a, b) => match (eval(a, event), eval(b, event)) {
            (Ok(V::Bool(false)), _) | (_, Ok(V::Bool(false))) => V::Bool(false),
            (Ok(V::Bool(true)), Ok(V::Bool(true))) => V::Bool(true),
            _ => return Err(()),
        },
        Node::Or(a, b) => match (eval(a, event), eval(b, event)) {
            (Ok(V::Bool(true)), _) | (_, Ok(V::Bool(true))) => V::Bool(true),
            (Ok(V::Bool(false)), Ok(V::Bool(false))) => V::Bool(false),
            _ => return Err(()),
        },
        Node::Cmp(op, a, b) => {
            let (a, b) = (eval(a, event)?, eval(b, event)?);
            let ord = match (&a, &b) {
                (V::Num(x), V::Num(y)) => x.partial_cmp(y),
                (V::Str(x), V::Str(y)) => Some(x.cmp(y)),
                (V::Bool(x), V::Bool(y)) => Some(x.cmp(y)),
                (V::Null, V::Null) => Some(std::cmp::Ordering::Equal),
                _ => None,
            };
            match (op, ord) {
                (CmpOp::Eq, _) => V::Bool(a == b),
                (CmpOp::Ne, _) => V::Bool(a != b),
                (_, None) => return Err(()),
                (CmpOp::Lt, Some(o)) => V::Bool(o.is_lt()),
                (CmpOp::Le, Some(o)) => V::Bool(o.is_le()),
                (CmpOp::Gt, Some(o)) => V::Bool(o.is_gt()),
                (CmpOp::Ge, Some(o)) => V::Bool(o.is_ge()),
            }
        }
        Node::Method(m, target, arg) => match (eval(target, event)?, eval(arg, event)?) {
            (V::Str(s), V::Str(a)) => V::Bool(match m {
                StrMethod::StartsWith => s.starts_with(&a),
                StrMethod::EndsWith => s.ends_with(&a),
                StrMethod::Contains => s.contains(&a),
            }),
            _ => return Err(()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(expr: &str, ev: &Value) -> bool {
        Expr::parse(expr)
            .unwrap_or_else(|e| panic!("{e}"))
            .matches(ev)
    }

    #[test]
    fn the_subset_dapr_users_write() {
        let ev = json!({"type": "order.created", "data": {"amount": 12, "region": "eu-west", "vip": true}});
        assert!(m(r#"event.type == "order.created""#, &ev));
        assert!(!m(r#"event.type == 'order.deleted'"#, &ev));
        assert!(m("event.data.amount > 3", &ev));
        assert!(!m("event.data.amount <= 3", &ev));
        assert!(m("event.data.amount >= 12 && event.data.vip", &ev));
        assert!(m(r#"event.type == "x" || event.data.vip == true"#, &ev));
        assert!(m(r#"!(event.type == "x")"#, &ev));
        assert!(m("has(event.data.region)", &ev));
        assert!(!m("has(event.data.missing)", &ev));
        assert!(m(r#"event.data.region.startsWith("eu")"#, &ev));
        assert!(m(r#"event.type.endsWith(".created")"#, &ev));
        assert!(m(r#"event.data.region.contains("west")"#, &ev));
        assert!(m("event.data.amount > -1", &ev));
        // Missing fields and mismatched types do not match, and never panic.
        assert!(!m("event.data.nope == 1", &ev));
        assert!(!m(r#"event.data.amount > "3""#, &ev));
        assert!(m("event.data.nope == 1 || true", &ev));
    }

    #[test]
    fn everything_else_is_rejected_at_load_time() {
        for bad in [
            "event.data.size() > 2",
            "event.type in ['a']",
            "event.data.amount + 1 > 2",
            "request.type == 'x'",
            "event.type ==",
            "(event.type == 'x'",
            "event.type == 'x' extra",
            "event.data.tags[0] == 'a'",
            "has(1)",
            "'unterminated",
            "",
        ] {
            let err = Expr::parse(bad).expect_err(bad);
            assert!(
                err.to_string().contains("unsupported routing expression"),
                "{err}"
            );
        }
    }
}
